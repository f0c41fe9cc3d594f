"""Epochs: the coarse block windows a stream shows as Dagster partitions.

A stream's fine ranges (``chunk_size`` blocks, one task each) stay in Trace state; Dagster sees
one partition per epoch, ``[k * epoch_blocks, (k + 1) * epoch_blocks)`` (aligned to block 0,
keyed like a range: ``000000100000-000000200000``, sortable, no commas). A range belongs to
every epoch it intersects (one, unless it crosses a boundary). An epoch is **complete** when
committed ranges cover its part of the job, ``[max(start, from_block), min(end, to_block))``
(the whole window for follow_head); only then is it materialized, with the versions of its
ranges. Until then its progress (ranges committed / total) shows as observations.

Pure helpers (``epoch_of``, ``epoch_windows``, ``stream_epoch_keys``) plus the state reads
the Dagster shell needs (``stream_targets``, ``epoch_progress``, ``complete_epochs``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

from trace_core.chain_sync.planner import parse_partition_key, range_partition_key
from trace_core.db.errors import translates_db_errors
from trace_core.db.queries import q
from trace_core.errors import ChainSyncJobNotFound


def epoch_of(block: int, size: int) -> tuple[int, int]:
    """The epoch window ``[start, end)`` holding ``block``."""
    start = block - block % size
    return start, start + size


def epoch_windows(start: int, end: int, size: int) -> list[tuple[int, int]]:
    """Every epoch window intersecting the block range ``[start, end)``, in order."""
    if end <= start:
        return []
    first = start - start % size
    return [(a, a + size) for a in range(first, end, size)]


def epoch_key(start: int, size: int) -> str:
    """Partition key of the epoch holding block ``start``."""
    return range_partition_key(*epoch_of(start, size))


def epoch_keys_of_range(start: int, end: int, size: int) -> list[str]:
    """Partition keys of the epochs a range ``[start, end)`` belongs to."""
    return [range_partition_key(a, b) for a, b in epoch_windows(start, end, size)]


def is_epoch_key(key: str, size: int) -> bool:
    """Whether ``key`` is an epoch of ``size`` blocks (not a fine range or another size)."""
    try:
        start, end = parse_partition_key(key)
    except ValueError:
        return False
    return start % size == 0 and end - start == size


@dataclass(frozen=True)
class StreamTarget:
    """What decides a stream's epochs: the job's bounds, the cursor and the newest head."""

    job_id: uuid.UUID
    job_name: str
    dataset_key: str
    chunk_size: int
    active: bool
    mode: str
    from_block: int
    to_block: int | None
    tail_lag: int | None
    epoch_blocks: int
    next_block: int
    head_block: int | None

    @property
    def known_end(self) -> int:
        """How far the stream's blocks are known: ``to_block`` for fixed_target (every epoch
        exists up front, so unplanned ones show as missing), else the planning cursor or the
        newest head behind ``tail_lag``, whichever is further."""
        if self.mode == "fixed_target" and self.to_block is not None:
            return self.to_block
        head_end = 0 if self.head_block is None else self.head_block + 1 - (self.tail_lag or 0)
        return max(self.next_block, head_end)

    def part_of_job(self, start: int, end: int) -> tuple[int, int]:
        """The blocks of the epoch ``[start, end)`` the job covers (follow_head: to its end)."""
        lo = max(start, self.from_block)
        hi = (
            end if self.mode != "fixed_target" or self.to_block is None else min(end, self.to_block)
        )
        return lo, max(lo, hi)

    def epoch_keys(self) -> list[str]:
        """Every epoch of the stream up to ``known_end``, sorted."""
        return [
            range_partition_key(a, b)
            for a, b in epoch_windows(self.from_block, self.known_end, self.epoch_blocks)
        ]


@translates_db_errors("chain_sync stream_targets")
def stream_targets(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    *,
    job_name: str | None = None,
    dataset_key: str | None = None,
) -> list[StreamTarget]:
    """Every stream of the org (or of one job / one stream), inactive ones included."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            q("epochs", "stream_targets"),
            {"org_id": org_id, "job_name": job_name, "dataset_key": dataset_key},
        ).fetchall()
    return [StreamTarget(**r) for r in rows]


def stream_target(
    conn: Connection[Any], org_id: str | uuid.UUID, job_name: str, dataset_key: str
) -> StreamTarget:
    """One stream. Raises ``ChainSyncJobNotFound`` if the job has no such stream."""
    found = stream_targets(conn, org_id, job_name=job_name, dataset_key=dataset_key)
    if not found:
        raise ChainSyncJobNotFound(f"{job_name}/{dataset_key}")
    return found[0]


@dataclass(frozen=True)
class EpochRange:
    """A planned range of an epoch with its newest version (when committed)."""

    range_start: int
    range_end: int
    task_id: uuid.UUID
    status: str
    dataset_version: uuid.UUID | None
    row_count: int | None
    bytes: int | None

    @property
    def key(self) -> str:
        return range_partition_key(self.range_start, self.range_end)


@dataclass(frozen=True)
class EpochProgress:
    """One epoch of one stream: its ranges and how far they cover the job's part of it."""

    job_name: str
    dataset_key: str
    start: int
    end: int
    covers_from: int  # the job's part of the epoch: [covers_from, covers_to)
    covers_to: int
    chunk_size: int
    ranges: tuple[EpochRange, ...]

    @property
    def key(self) -> str:
        return range_partition_key(self.start, self.end)

    def _blocks(self, status: str | None) -> int:
        return sum(
            max(0, min(r.range_end, self.covers_to) - max(r.range_start, self.covers_from))
            for r in self.ranges
            if status is None or r.status == status
        )

    @property
    def committed(self) -> list[EpochRange]:
        return [r for r in self.ranges if r.status == "completed"]

    @property
    def dead(self) -> list[EpochRange]:
        return [r for r in self.ranges if r.status == "dead"]

    @property
    def blocks_expected(self) -> int:
        return self.covers_to - self.covers_from

    @property
    def blocks_committed(self) -> int:
        return self._blocks("completed")

    @property
    def blocks_unplanned(self) -> int:
        """Blocks of the job's part of the epoch that no planned range covers yet."""
        return max(0, self.blocks_expected - self._blocks(None))

    @property
    def ranges_total(self) -> int:
        """Planned ranges plus the ones still to plan (at ``chunk_size`` each)."""
        return len(self.ranges) + -(-self.blocks_unplanned // self.chunk_size)

    @property
    def complete(self) -> bool:
        return self.blocks_expected > 0 and self.blocks_committed >= self.blocks_expected

    @property
    def rows(self) -> int:
        return sum(r.row_count or 0 for r in self.committed)

    @property
    def bytes(self) -> int:
        return sum(r.bytes or 0 for r in self.committed)

    def versions(self) -> dict[str, str]:
        """``{range key: dataset version}`` of the committed ranges."""
        return {r.key: str(r.dataset_version) for r in self.committed}


@translates_db_errors("chain_sync epoch_progress")
def progress_of(conn: Connection[Any], target: StreamTarget, start: int, end: int) -> EpochProgress:
    """The ranges of the block window ``[start, end)`` of a stream (an epoch, or any window)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            q("epochs", "epoch_ranges"),
            {
                "job_id": target.job_id,
                "dataset_key": target.dataset_key,
                "start": start,
                "end": end,
            },
        ).fetchall()
    lo, hi = target.part_of_job(start, end)
    return EpochProgress(
        target.job_name,
        target.dataset_key,
        start,
        end,
        lo,
        hi,
        target.chunk_size,
        tuple(EpochRange(**r) for r in rows),
    )


def epoch_progress(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    job_name: str,
    dataset_key: str,
    start: int,
    end: int,
) -> list[EpochProgress]:
    """Progress of every epoch the block range ``[start, end)`` belongs to (usually one)."""
    target = stream_target(conn, org_id, job_name, dataset_key)
    return [
        progress_of(conn, target, a, b) for a, b in epoch_windows(start, end, target.epoch_blocks)
    ]


@translates_db_errors("chain_sync complete_epochs")
def complete_epochs(conn: Connection[Any], target: StreamTarget) -> list[tuple[int, int]]:
    """Windows of the stream's complete epochs (one aggregate query over its ranges)."""
    size = target.epoch_blocks
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            q("epochs", "epoch_summary"),
            {"job_id": target.job_id, "dataset_key": target.dataset_key, "size": size},
        ).fetchall()
    out = []
    for r in rows:
        a = r["epoch"] * size
        lo, hi = target.part_of_job(a, a + size)
        if hi > lo and r["blocks_committed"] >= hi - lo:
            out.append((a, a + size))
    return out


def sizes(targets: Iterable[StreamTarget]) -> dict[tuple[str, str], int]:
    """``{(job, stream): epoch_blocks}``."""
    return {(t.job_name, t.dataset_key): t.epoch_blocks for t in targets}


def versions_digest(progress: EpochProgress) -> str:
    """sha256 of the epoch's ``{range key: dataset version}``: a repaired range is a new one."""
    return hashlib.sha256(json.dumps(progress.versions(), sort_keys=True).encode()).hexdigest()


@translates_db_errors("chain_sync claim_materialization")
def claim_materialization(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    progress: EpochProgress,
    by: str,
    takeover_seconds: float | None = None,
) -> bool:
    """True for exactly one caller per (epoch, range versions): the one to report the epoch's
    materialization. With ``takeover_seconds`` a claim older than that is taken over (its
    claimer died before its report reached Dagster). Caller holds: ``progress.complete``."""
    row = conn.execute(
        q("epochs", "claim_materialization"),
        {
            "org_id": org_id,
            "job_name": progress.job_name,
            "dataset_key": progress.dataset_key,
            "start": progress.start,
            "end": progress.end,
            "versions": versions_digest(progress),
            "by": by,
            "takeover_seconds": takeover_seconds,
        },
    ).fetchone()
    return row is not None
