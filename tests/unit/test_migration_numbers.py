"""Migration numbering (docs/architecture.md, Migrations): one file per number, except the two
state files numbered 0008 that were applied before this was checked. Applied files are never
renamed (yoyo records them by name), so the exception stays and no new one may appear."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

MIGRATIONS = Path(__file__).resolve().parents[2] / "trace_core" / "sql" / "migrations"
KNOWN_DUPLICATES = {("state", "0008"): {"0008_task_revive.sql", "0008_worker_runs.sql"}}


def test_every_migration_is_numbered_and_numbers_are_unique() -> None:
    for which in ("state", "data"):
        names = sorted(p.name for p in (MIGRATIONS / which).glob("*.sql"))
        assert names and all(re.fullmatch(r"\d{4}_[a-z0-9_]+\.sql", n) for n in names), names
        counts = Counter(n[:4] for n in names)
        for number, count in counts.items():
            if count > 1:
                dupes = {n for n in names if n.startswith(number)}
                assert KNOWN_DUPLICATES.get((which, number)) == dupes, (which, number, dupes)
