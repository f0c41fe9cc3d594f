"""Retention of dataset versions: superseded versions are garbage-collected after a grace period.

A version is *superseded* when newer versions of its dataset serve every block of its range
(``registry.visible_parts``: a repair, a compaction, a real sync over a fake range). It is
superseded *since* the newest ``created_at`` among the newer versions overlapping it (never
earlier than the moment it really stopped serving), and is collected once that is older than
``grace_seconds``, unless a queued or running task pins it in its ``grants`` (its capability
token is, or will be, live). Deciding is pure (``plan_collection``); acting is
``gc_versions``:

1. tombstone: in one transaction per version, re-check the pin and set ``collected_at`` (the
   row stays; readers skip it from then on; repairs still count it);
2. purge: delete the objects under its prefix, then set ``purged_at``. A run that stops
   between the two leaves a tombstone without ``purged_at``, which the next run purges first.

``dry_run`` decides and reports, and changes nothing. A collected version committed again (the
same deterministic id) is published anew and serves as the newest (``commit.commit_version``).
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

from trace_core.datasets.registry import VersionRecord, visible_parts
from trace_core.db.errors import translates_db_errors
from trace_core.db.queries import q
from trace_core.runtime import Runtime
from trace_core.storage.base import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Superseded:
    """A version no block is read from, and since when."""

    record: VersionRecord
    since: datetime


@dataclass
class VersionGcReport:
    """What one retention pass collected (or, with ``dry_run``, would collect) and kept."""

    dry_run: bool
    collected: list[Superseded] = field(default_factory=list)
    kept_pinned: list[Superseded] = field(default_factory=list)
    kept_in_grace: list[Superseded] = field(default_factory=list)
    purged: int = 0  # version prefixes whose objects were deleted
    objects_deleted: int = 0

    @property
    def bytes_collected(self) -> int:
        return sum(s.record.bytes for s in self.collected)

    def lines(self) -> list[str]:
        """A human-readable report, one line per version."""
        verb = "would collect" if self.dry_run else "collected"
        out = [
            f"{verb} {len(self.collected)} superseded version(s), {self.bytes_collected} bytes; "
            f"kept {len(self.kept_pinned)} pinned by live tasks, {len(self.kept_in_grace)} in "
            f"the grace period; purged {self.purged} prefix(es), {self.objects_deleted} objects"
        ]
        for label, items in (
            (verb, self.collected),
            ("pinned", self.kept_pinned),
            ("in grace", self.kept_in_grace),
        ):
            out += [
                f"  {label}: {s.record.dataset_key} [{s.record.range_start}, "
                f"{s.record.range_end}) {s.record.dataset_version} superseded since "
                f"{s.since.isoformat()}{' (fake)' if s.record.fake else ''}"
                for s in items
            ]
        return out


def superseded(records: Sequence[VersionRecord]) -> list[Superseded]:
    """The versions among ``records`` (any datasets) that serve no block, with since when."""
    by_dataset: dict[uuid.UUID, list[VersionRecord]] = defaultdict(list)
    for rec in records:
        by_dataset[rec.dataset_uuid].append(rec)
    out: list[Superseded] = []
    for group in by_dataset.values():
        serving = {p.record.dataset_version for p in visible_parts(group)}
        for rec in group:
            if rec.dataset_version in serving:
                continue
            newer = [
                o.created_at
                for o in group
                if o.dataset_version != rec.dataset_version
                and o.range_start < rec.range_end
                and rec.range_start < o.range_end
                and o.created_at >= rec.created_at
            ]
            out.append(Superseded(rec, max(newer, default=rec.created_at)))
    return sorted(out, key=lambda s: (s.record.dataset_key, s.record.range_start, s.since))


def plan_collection(
    records: Sequence[VersionRecord],
    pinned: Collection[str],
    *,
    now: datetime,
    grace_seconds: float,
    dry_run: bool = False,
) -> VersionGcReport:
    """Split the superseded versions into collect / pinned / in grace. Pure."""
    report = VersionGcReport(dry_run=dry_run)
    cutoff = now - timedelta(seconds=grace_seconds)
    for s in superseded(records):
        if str(s.record.dataset_version) in pinned:
            report.kept_pinned.append(s)
        elif s.since > cutoff:
            report.kept_in_grace.append(s)
        else:
            report.collected.append(s)
    return report


def scheduled_retention(rt: Runtime) -> VersionGcReport:
    """The retention step of the scheduled maintenance run (``trace_integrity_pass``):
    ``gc_versions`` with ``TRACE_VERSION_GRACE_SECONDS``."""
    with rt.state() as conn:
        return gc_versions(
            conn, rt.store, rt.settings.org_id, grace_seconds=rt.settings.version_grace_seconds
        )


@translates_db_errors("dataset gc_versions")
def gc_versions(
    conn: Connection[Any],
    store: ObjectStore,
    org_id: str | uuid.UUID,
    *,
    grace_seconds: float,
    dry_run: bool = False,
) -> VersionGcReport:
    """One retention pass over an org's versions (see the module docstring).

    ``conn`` is autocommit and not inside a transaction. Storage errors propagate after the
    tombstones already written (their purge is retried by the next pass).
    """
    with conn.cursor(row_factory=dict_row) as cur:
        records = [
            VersionRecord(**row)
            for row in cur.execute(
                q("datasets", "live_versions"), {"org_id": uuid.UUID(str(org_id))}
            ).fetchall()
        ]
    pinned = {str(r[0]) for r in conn.execute(q("datasets", "pinned_versions")).fetchall()}
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    report = plan_collection(
        records, pinned, now=row[0], grace_seconds=grace_seconds, dry_run=dry_run
    )
    if dry_run:
        return report
    collected: list[Superseded] = []
    for s in report.collected:
        params = {"dataset_version": s.record.dataset_version}
        with conn.transaction():
            conn.execute(q("datasets", "lock_version"), params)
            if conn.execute(q("datasets", "version_pinned"), params).fetchone() == (True,):
                report.kept_pinned.append(s)  # a task pinned it since the plan
                continue
            if conn.execute(q("datasets", "collect_version"), params).fetchone() is not None:
                collected.append(s)
    report.collected = collected
    for version, prefix in conn.execute(q("datasets", "unpurged_versions")).fetchall():
        report.objects_deleted += store.delete_prefix(prefix)
        conn.execute(q("datasets", "mark_purged"), {"dataset_version": version})
        report.purged += 1
    if report.collected or report.purged:
        log.info(
            "dataset versions collected",
            extra={
                "collected": len(report.collected),
                "purged": report.purged,
                "objects": report.objects_deleted,
                "bytes": report.bytes_collected,
            },
        )
    return report
