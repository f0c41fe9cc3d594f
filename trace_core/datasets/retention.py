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

import bisect
import heapq
import logging
import uuid
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
        gone = [r for r in group if r.dataset_version not in serving]
        if gone:
            newest = _newest_overlapping(group, gone)
            out += [Superseded(r, max(r.created_at, newest[r.dataset_version])) for r in gone]
    return sorted(out, key=lambda s: (s.record.dataset_key, s.record.range_start, s.since))


def _newest_overlapping(
    group: Sequence[VersionRecord], targets: Sequence[VersionRecord]
) -> dict[uuid.UUID, datetime]:
    """Per target, the newest ``created_at`` among the versions of ``group`` overlapping it
    (itself included). A sweep by range start: versions starting inside the target are scanned
    (few: a compaction's inputs start inside it, nothing else does), versions starting before
    it come from a max-heap of those still open at its start. O(n log n) for a history whose
    versions do not nest deeply, where comparing every pair cost O(n^2) at 100k versions."""
    by_start = sorted(group, key=lambda r: r.range_start)
    starts = [r.range_start for r in by_start]
    heap: list[tuple[int, int, int]] = []  # (-created_at in us, range_end, index), started
    out: dict[uuid.UUID, datetime] = {}
    i = 0
    for t in sorted(targets, key=lambda r: r.range_start):
        while i < len(by_start) and by_start[i].range_start < t.range_start:
            rec = by_start[i]
            heapq.heappush(heap, (-_micros(rec.created_at), rec.range_end, i))
            i += 1
        while heap and heap[0][1] <= t.range_start:
            heapq.heappop(heap)  # ended before this target (and every later one) starts
        newest = t.created_at
        if heap:
            newest = max(newest, by_start[heap[0][2]].created_at)
        for k in range(bisect.bisect_left(starts, t.range_start), len(starts)):
            other = by_start[k]
            if other.range_start >= t.range_end:
                break
            newest = max(newest, other.created_at)
        out[t.dataset_version] = newest
    return out


def _micros(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(microseconds=1)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
