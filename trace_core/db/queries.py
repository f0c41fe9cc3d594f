"""Named SQL blocks loaded once from ``trace_core/sql/queries/*.sql``.

A file holds blocks introduced by ``-- name: some_query``; parameters use ``%(name)s``.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

QUERIES_DIR = Path(__file__).resolve().parents[1] / "sql" / "queries"
_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_blocks(text: str) -> dict[str, str]:
    """Split a file into ``{name: sql}``; duplicate names are an error."""
    out: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[m.end() : end].strip()
        if m.group(1) in out:
            raise ValueError(f"duplicate query name {m.group(1)!r}")
        out[m.group(1)] = body
    return out


@functools.cache
def load(module: str) -> dict[str, str]:
    """Queries of ``sql/queries/{module}.sql``."""
    return parse_blocks((QUERIES_DIR / f"{module}.sql").read_text())


def q(module: str, name: str) -> str:
    """One named query; KeyError names the missing block."""
    try:
        return load(module)[name]
    except KeyError:
        raise KeyError(f"no query {name!r} in {module}.sql") from None
