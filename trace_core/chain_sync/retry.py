"""Revive and re-run chain_sync ranges: what ``trace-lite retry`` and the stream assets call.

Selection names a job (name or id), optionally one stream and one exact block range; tasks are
named by id. Anything unknown raises an error naming it before anything changes. The revive
itself is ``trace_core.chain_sync.revive`` (fresh attempt budget, range back to ``scheduled``,
wake-up through the outbox).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg import Connection
from psycopg.rows import dict_row

from trace_core.chain_sync import store
from trace_core.chain_sync.planner import parse_partition_key
from trace_core.chain_sync.revive import (
    SOURCE_CLI,
    SOURCE_PARTITION,
    ReviveOutcome,
    prepare_rerun,
    revive_tasks,
)
from trace_core.db.queries import q
from trace_core.errors import ConfigError, UnknownRange, UnknownStream

if TYPE_CHECKING:
    from trace_core.runtime import Runtime

DEAD_RANGES_SHOWN = 20  # per stream, in status


def parse_block_range(text: str) -> tuple[int, int]:
    """``A-B`` (end-exclusive blocks, or a partition key ``000000000000-000000000500``).

    Raises ``ConfigError`` naming ``--range`` and the text.
    """
    try:
        start, end = parse_partition_key(text.strip())
    except ValueError:
        raise ConfigError(f"{text!r} is not a block range START-END", field="--range") from None
    if end <= start:
        raise ConfigError(f"{text!r}: END must be greater than START", field="--range")
    return start, end


@dataclass(frozen=True)
class RetryReport:
    """What one retry request looked at: revived tasks and ones that were not dead."""

    outcomes: list[ReviveOutcome] = field(default_factory=list)

    @property
    def revived(self) -> list[ReviveOutcome]:
        return [o for o in self.outcomes if o.revived]

    @property
    def not_dead(self) -> list[ReviveOutcome]:
        return [o for o in self.outcomes if not o.revived]

    def as_json(self) -> dict[str, Any]:
        return {
            "revived": [o.as_json() for o in self.revived],
            "not_dead": [o.as_json() for o in self.not_dead],
        }


def _ranges(
    conn: Connection[Any],
    job_id: uuid.UUID,
    *,
    stream: str | None,
    block_range: tuple[int, int] | None,
    dead_only: bool,
    window: bool = False,
) -> list[dict[str, Any]]:
    start, end = block_range if block_range else (None, None)
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            q("chain_sync", "ranges_for_retry"),
            {
                "job_id": job_id,
                "dataset_key": stream,
                "range_start": start,
                "range_end": end,
                "dead_only": dead_only,
                "window": window,
            },
        ).fetchall()


def _check_stream(conn: Connection[Any], job_id: uuid.UUID, job: str, stream: str) -> None:
    known = sorted(
        r[0] for r in conn.execute(q("chain_sync", "job_stream_names"), {"job_id": job_id})
    )
    if stream not in known:
        raise UnknownStream(job, stream, known)


def select_range_tasks(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    *,
    job: str,
    stream: str | None = None,
    block_range: tuple[int, int] | None = None,
) -> list[uuid.UUID]:
    """Task ids a job-level retry targets: every dead range of the job (or of one stream); with
    ``block_range``, that range in the stream (or in every stream of the job that planned it),
    dead or not, so a retry of a live range can say it is not dead. A ``block_range`` that is
    no planned range but holds some (an epoch partition's key) targets the dead ones inside it.

    Raises ``ChainSyncJobNotFound``, ``UnknownStream`` or ``UnknownRange`` naming what is unknown.
    """
    job_id = store.resolve_job(conn, org_id, job)
    if stream is not None:
        _check_stream(conn, job_id, job, stream)
    rows = _ranges(
        conn, job_id, stream=stream, block_range=block_range, dead_only=block_range is None
    )
    if block_range is not None and not rows:
        within = _ranges(
            conn, job_id, stream=stream, block_range=block_range, dead_only=False, window=True
        )
        if not within:
            raise UnknownRange(job, stream, f"[{block_range[0]}, {block_range[1]})")
        rows = [r for r in within if r["status"] == "dead"]
    return [r["task_id"] for r in rows]


def retry(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    *,
    task_ids: Sequence[uuid.UUID] = (),
    job: str | None = None,
    stream: str | None = None,
    block_range: tuple[int, int] | None = None,
    source: str = SOURCE_CLI,
    detail: str | None = None,
) -> RetryReport:
    """Revive the named tasks, or a job's dead ranges (see ``select_range_tasks``), in one
    transaction: all or nothing. Raises the selection's errors or ``UnknownTask``."""
    with conn.transaction():
        ids = list(task_ids)
        if job is not None:
            ids += select_range_tasks(conn, org_id, job=job, stream=stream, block_range=block_range)
        outcomes = revive_tasks(conn, ids, source=source, detail=detail)
    return RetryReport(outcomes)


@dataclass(frozen=True)
class DeadRange:
    """A dead range and why: its task's last error, attempts spent, when it died."""

    range_start: int
    range_end: int
    task_id: str
    attempts: int  # in the budget it died with (attempts since the last revive)
    max_attempts: int
    total_attempts: int
    revives: int
    last_error_kind: str | None
    last_error: str | None
    died_at: str | None

    @property
    def retry_command(self) -> str:
        return f"trace-lite retry --task {self.task_id}"


def dead_ranges(
    conn: Connection[Any], job_id: uuid.UUID, *, per_stream: int = DEAD_RANGES_SHOWN
) -> dict[str, list[DeadRange]]:
    """Dead ranges per stream (the first ``per_stream`` of each, by block), each with its
    task's last error, attempts and when it died."""
    out: dict[str, list[DeadRange]] = {}
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            q("chain_sync", "dead_ranges"), {"job_id": job_id, "per_stream": per_stream}
        ).fetchall()
    for r in rows:
        out.setdefault(r["dataset_key"], []).append(
            DeadRange(
                range_start=r["range_start"],
                range_end=r["range_end"],
                task_id=str(r["task_id"]),
                attempts=r["attempt"] - r["attempt_base"],
                max_attempts=r["max_attempts"],
                total_attempts=r["attempt"],
                revives=r["revives"],
                last_error_kind=r["last_error_kind"],
                last_error=r["last_error"],
                died_at=r["died_at"].isoformat() if r["died_at"] else None,
            )
        )
    return out


# --- running one range from Dagster ------------------------------------------------------


@dataclass(frozen=True)
class PreparedRange:
    """A range about to run on request (the stream asset's partition): its task, whether it
    was revived first, and its row if it had already committed (then nothing is to run)."""

    task_id: uuid.UUID
    revived: bool = False
    committed: dict[str, Any] | None = None


def prepare_range(
    rt: Runtime,
    job_name: str,
    dataset_key: str,
    partition_key: str,
    *,
    detail: str | None = None,
) -> PreparedRange:
    """Make the range behind a stream partition runnable now: revive its task if dead (its
    queued retry made due now). A committed range is reported as is. Raises
    ``ChainSyncJobNotFound``/``UnknownStream``/``UnknownRange`` for a partition that is no
    planned range. The caller executes the task (``trace_core.worker.run_range``)."""
    try:
        block_range = parse_partition_key(partition_key)
    except ValueError:
        raise UnknownRange(job_name, dataset_key, repr(partition_key)) from None
    with rt.state() as conn, conn.transaction():
        job_id = store.resolve_job(conn, rt.settings.org_id, job_name)
        _check_stream(conn, job_id, job_name, dataset_key)
        rows = _ranges(conn, job_id, stream=dataset_key, block_range=block_range, dead_only=False)
        if not rows:
            raise UnknownRange(job_name, dataset_key, f"[{block_range[0]}, {block_range[1]})")
        row = rows[0]
        if row["status"] == "completed":
            return PreparedRange(row["task_id"], committed=dict(row))
        prep = prepare_rerun(
            conn,
            [row["task_id"]],
            source=SOURCE_PARTITION,
            detail=detail,
            wake_delay_seconds=rt.settings.lease_seconds,
        )
    return PreparedRange(row["task_id"], revived=bool(prep.revived))
