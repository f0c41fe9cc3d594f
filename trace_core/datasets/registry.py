"""Read side of the dataset registry (``state.datasets`` / ``state.dataset_versions``).

Only registered versions exist for readers: an object prefix without a registry row (a commit
that rolled back) is invisible here, whatever its contents.
"""

from __future__ import annotations

import bisect
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

from trace_core.db.queries import q


@dataclass(frozen=True)
class VersionRecord:
    """One committed dataset version (a row of ``state.dataset_versions`` plus its dataset)."""

    dataset_version: uuid.UUID
    dataset_uuid: uuid.UUID
    org_id: uuid.UUID
    dataset_key: str
    chain_id: int
    range_start: int
    range_end: int
    config_hash: str
    schema_hash: str
    storage_prefix: str
    manifest_key: str
    row_count: int
    bytes: int
    file_count: int
    task_id: uuid.UUID | None
    attempt: int | None
    created_at: datetime
    fake: bool = False  # made by TRACE_CRYO_MODE=fake (or derived from such a version)
    collected: bool = False  # garbage-collected (a tombstone; only get_version returns one)

    def as_json(self) -> dict[str, Any]:
        """JSON-ready fields (ids and timestamps as strings)."""
        out = asdict(self)
        out.pop("collected")
        for name in ("dataset_version", "dataset_uuid", "org_id", "task_id"):
            out[name] = str(out[name]) if out[name] is not None else None
        out["created_at"] = self.created_at.isoformat()
        return out


def _rows(conn: Connection[Any], query: str, params: dict[str, Any]) -> list[VersionRecord]:
    with conn.cursor(row_factory=dict_row) as cur:
        return [VersionRecord(**row) for row in cur.execute(query, params).fetchall()]


def get_version(conn: Connection[Any], dataset_version: uuid.UUID) -> VersionRecord | None:
    """The registered version, or None."""
    rows = _rows(conn, q("datasets", "get_version"), {"dataset_version": dataset_version})
    return rows[0] if rows else None


def versions_of_dataset(conn: Connection[Any], dataset_uuid: uuid.UUID) -> list[VersionRecord]:
    """Every registered version of a dataset, by range then newest first."""
    return _rows(conn, q("datasets", "versions_of_dataset"), {"dataset_uuid": dataset_uuid})


@dataclass(frozen=True)
class VisiblePart:
    """Blocks ``[start, end)`` a reader takes from ``record`` (a sub-range of its range)."""

    record: VersionRecord
    start: int
    end: int

    @property
    def whole(self) -> bool:
        return (self.start, self.end) == (self.record.range_start, self.record.range_end)


def visible_parts(records: list[VersionRecord]) -> list[VisiblePart]:
    """Which version serves each block: newest first (``created_at``, then wider ranges), a
    version serves the blocks of its range that no newer version serves. A compacted version
    registered after the ranges it covers replaces them; a newer, narrower version replaces
    only its own blocks of an older, wider one, which keeps serving the rest. Sorted by range.
    """
    ordered = sorted(
        records,
        key=lambda r: (r.created_at, r.range_end - r.range_start, str(r.dataset_version)),
        reverse=True,
    )
    taken = Coverage()
    parts: list[VisiblePart] = []
    for rec in ordered:
        for a, b in taken.add(rec.range_start, rec.range_end):
            parts.append(VisiblePart(rec, a, b))
    return sorted(parts, key=lambda p: (p.start, p.end))


class Coverage:
    """A set of blocks as sorted, disjoint, merged end-exclusive intervals. ``add`` costs
    O(log n) plus the intervals it merges (consecutive ranges collapse into one interval), so
    resolving a history of n versions is O(n log n), not O(n^2)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, start: int, end: int) -> list[tuple[int, int]]:
        """Cover ``[start, end)``; returns the sub-ranges that were not covered before."""
        starts, ends = self.starts, self.ends
        out: list[tuple[int, int]] = []
        cursor = start
        for k in range(bisect.bisect_right(ends, start), bisect.bisect_left(starts, end)):
            if starts[k] > cursor:
                out.append((cursor, starts[k]))
            cursor = max(cursor, ends[k])
        if cursor < end:
            out.append((cursor, end))
        lo, hi = bisect.bisect_left(ends, start), bisect.bisect_right(starts, end)
        if lo < hi:
            start, end = min(start, starts[lo]), max(end, ends[hi - 1])
        starts[lo:hi] = [start]
        ends[lo:hi] = [end]
        return out


def latest_covering(records: list[VersionRecord]) -> list[VersionRecord]:
    """The versions that serve at least one block (``visible_parts``), sorted by range."""
    serving: dict[uuid.UUID, VersionRecord] = {}
    for part in visible_parts(records):
        serving.setdefault(part.record.dataset_version, part.record)
    return sorted(serving.values(), key=lambda r: (r.range_start, r.range_end))


def latest_versions(conn: Connection[Any], dataset_uuid: uuid.UUID) -> list[VersionRecord]:
    """The versions a reader should see for a dataset: ``latest_covering`` of all versions."""
    return latest_covering(versions_of_dataset(conn, dataset_uuid))


def versions_for_stream(
    conn: Connection[Any], org_id: str | uuid.UUID, chain_id: int, dataset_key: str
) -> list[VersionRecord]:
    """``latest_versions`` of the dataset named by ``(org_id, chain_id, dataset_key)``."""
    records = _rows(
        conn,
        q("datasets", "versions_for_stream"),
        {"org_id": uuid.UUID(str(org_id)), "chain_id": chain_id, "dataset_key": dataset_key},
    )
    return latest_covering(records)


def missing_ranges(records: list[VersionRecord], start: int, end: int) -> list[tuple[int, int]]:
    """Sub-ranges of ``[start, end)`` that no record covers (end-exclusive pairs)."""
    return gaps([(r.range_start, r.range_end) for r in records], start, end)


def gaps(intervals: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """Sub-ranges of ``[start, end)`` that no end-exclusive interval covers."""
    out: list[tuple[int, int]] = []
    cursor = start
    for a, b in sorted(intervals):
        if b <= cursor or a >= end:
            continue
        if a > cursor:
            out.append((cursor, a))
        cursor = max(cursor, b)
    if cursor < end:
        out.append((cursor, end))
    return out
