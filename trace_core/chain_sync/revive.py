"""Reviving dead tasks and ranges: a fresh attempt budget, through the outbox. The one place
for retry and revive in chain_sync (the task state machine's own retry policy and stranded-run
re-wakes are ``tasks.retry``; the engine's entry for the shell is ``engine.revive``).

A task ends ``dead`` when it runs out of attempts or fails fatally; a chain_sync range whose task
is dead stops its stream. Reviving it (``trace-lite retry``, re-executing a failed Dagster run,
launching the stream asset's partition) puts it back to ``queued``, due now, with a fresh budget:
attempt numbers keep counting up (fencing and history need unique numbers) and ``attempt_base``
records the attempts spent so far. Its range goes back to ``scheduled``. The wake-up is an outbox
row written in the same transaction, so the outbox publisher stays the only publisher.

Every function here runs in the caller's transaction and decides nothing from the caller's
clock: lease and wake-up times are the database's ``now()``.

Selecting what to revive (``retry``: what ``trace-lite retry`` calls; ``prepare_range``: what a
stream asset's partition calls) names a job (name or id), optionally one stream and one exact
block range; tasks are named by id. Anything unknown raises an error naming it before
anything changes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg import Connection
from psycopg.rows import dict_row

from trace_core.chain_sync import range_outcomes, store
from trace_core.chain_sync.planner import parse_partition_key
from trace_core.db.queries import q
from trace_core.errors import ConfigError, UnknownRange, UnknownStream, UnknownTask
from trace_core.outbox import enqueue_wakeup

if TYPE_CHECKING:
    from trace_core.runtime import Runtime

log = logging.getLogger(__name__)

# Who asked for a revive (state.task_revivals.source).
SOURCE_CLI = "cli"
SOURCE_RERUN = "dagster_reexecution"
SOURCE_PARTITION = "dagster_partition"


@dataclass(frozen=True)
class ReviveOutcome:
    """One task a revive looked at. ``revived`` is False when it was not dead (unchanged)."""

    task_id: uuid.UUID
    operator: str
    status: str  # before the revive: 'dead' when revived
    revived: bool
    attempts: int  # attempts spent so far (the next claim is attempts + 1)
    max_attempts: int
    last_error: str | None
    last_error_kind: str | None
    paused: bool = False  # revived, but its job is paused: it runs after `resume`
    payload: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        """``job/stream [start, end)`` for a chain_sync range, else the operator name."""
        p = self.payload
        if {"job_name", "dataset_key", "range_start", "range_end"} <= p.keys():
            return f"{p['job_name']}/{p['dataset_key']} [{p['range_start']}, {p['range_end']})"
        return self.operator

    def as_json(self) -> dict[str, Any]:
        return {
            "task_id": str(self.task_id),
            "operator": self.operator,
            "label": self.label,
            "status": self.status,
            "revived": self.revived,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "last_error_kind": self.last_error_kind,
            "last_error": self.last_error,
            "paused": self.paused,
        }


def parse_task_id(raw: str | uuid.UUID) -> uuid.UUID:
    """A task id from text. Raises ``UnknownTask`` naming the text if it is not a UUID."""
    if isinstance(raw, uuid.UUID):
        return raw
    try:
        return uuid.UUID(str(raw).strip())
    except ValueError:
        raise UnknownTask(f"{raw!r} (not a task id)") from None


def revive_tasks(
    conn: Connection[Any],
    task_ids: Sequence[uuid.UUID],
    *,
    source: str,
    detail: str | None = None,
    wake_delay_seconds: float = 0.0,
    missing_ok: bool = False,
) -> list[ReviveOutcome]:
    """Revive every dead task among ``task_ids`` (in order, duplicates once) in the caller's
    transaction; the others are reported unchanged.

    Each revived task gets a fresh attempt budget, a ``task_revivals`` row, its chain_sync range
    back to ``scheduled``, and (unless its job is paused) an outbox wake-up available after
    ``wake_delay_seconds`` (a run that executes the task itself passes its lease length, so the
    wake-up is only a backstop). Raises ``UnknownTask`` naming every unknown id before changing
    anything, unless ``missing_ok`` (then unknown ids are left out of the result).
    """

    ids = list(dict.fromkeys(task_ids))
    with conn.cursor(row_factory=dict_row) as cur:
        rows = {
            r["task_id"]: r
            for r in cur.execute(q("tasks", "lock_for_revive"), {"task_ids": ids}).fetchall()
        }
    missing = [t for t in ids if t not in rows]
    if missing and not missing_ok:
        raise UnknownTask(", ".join(str(t) for t in missing))
    out: list[ReviveOutcome] = []
    for task_id in (t for t in ids if t in rows):
        row = rows[task_id]
        base = {
            "task_id": task_id,
            "operator": row["operator"],
            "status": row["status"],
            "attempts": row["attempt"],
            "max_attempts": row["max_attempts"],
            "last_error": row["last_error"],
            "last_error_kind": row["last_error_kind"],
            "payload": row["payload"],
        }
        if row["status"] != "dead":
            out.append(ReviveOutcome(revived=False, paused=row["paused"], **base))
            continue
        revived = conn.execute(
            q("tasks", "revive_task"),
            {"task_id": task_id, "wake_delay_seconds": float(wake_delay_seconds)},
        ).fetchone()
        assert revived is not None  # the row is locked and dead
        generation, paused, revive_no, wake_at = revived
        conn.execute(
            q("tasks", "insert_revival"),
            {
                "task_id": task_id,
                "revive": revive_no,
                "attempt": row["attempt"],
                "last_error": row["last_error"],
                "source": source,
                "detail": detail,
            },
        )
        if range_outcomes.range_for_task(conn, task_id) is not None:
            range_outcomes.revive_range(conn, task_id)
        if not paused:
            enqueue_wakeup(conn, task_id=task_id, generation=generation, available_at=wake_at)
        log.info(
            "task revived",
            extra={"task_id": str(task_id), "attempt": row["attempt"], "source": source},
        )
        out.append(ReviveOutcome(revived=True, paused=paused, **base))
    return out


@dataclass(frozen=True)
class RerunPreparation:
    """What ``prepare_rerun`` changed before a run executes its tasks itself."""

    revived: list[ReviveOutcome]
    expedited: list[uuid.UUID]


def prepare_rerun(
    conn: Connection[Any],
    task_ids: Iterable[uuid.UUID],
    *,
    source: str,
    detail: str | None,
    wake_delay_seconds: float,
) -> RerunPreparation:
    """Make ``task_ids`` claimable by a run that is about to execute them: revive the dead ones
    and make queued ones waiting out a retry backoff due now. Unknown ids are ignored (the run
    reports them as skipped); succeeded and running tasks are left alone."""
    ids = list(task_ids)
    outcomes = revive_tasks(
        conn,
        ids,
        source=source,
        detail=detail,
        wake_delay_seconds=wake_delay_seconds,
        missing_ok=True,
    )
    expedited = [r[0] for r in conn.execute(q("tasks", "expedite_queued"), {"task_ids": ids})]
    return RerunPreparation([o for o in outcomes if o.revived], expedited)


# --- selecting ranges to revive (trace-lite retry, stream partitions) ---------------------

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
    planned range. The caller executes the task (``trace_core.engine.revive.run_range``)."""
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
