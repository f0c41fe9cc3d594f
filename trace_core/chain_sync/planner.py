"""The chain_sync planner: turn stream cursors into scheduled ranges, each with its task.

One tick walks every enabled job's active streams. Each stream is planned in its own
transaction that locks the cursor row (serializing planners), so a range row, its task and the
task's outbox wake-up are written together, and the cursor advances with them. Task ids are
deterministic (``range_task_id``), so a replayed tick re-creates nothing.

Decisions are pure functions (``eligible_end``, ``plan_ranges``); the database supplies the
clock (head ages come from ``now()``).

Slot accounting: ``max_inflight`` caps ranges in state ``scheduled`` (queued, running or
retrying). A ``dead`` range does not hold a slot, but it stops its stream from planning more
(status shows it) until it is revived (``trace_core.chain_sync.revive``): a stream never leaves a hole
behind its cursor silently. What happens to a planned range when its task ends is
``trace_core.chain_sync.range_outcomes``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

from trace_core.chain_sync import capabilities
from trace_core.chain_sync.head import MISSING_RPC_URL
from trace_core.db.errors import translates_db_errors
from trace_core.db.queries import q
from trace_core.errors import InvalidPayload
from trace_core.operators.cryo_payload import OPERATOR, CryoIngestTask
from trace_core.settings import Settings, rpc_pool_env_var, rpc_pool_urls
from trace_core.tasks.lifecycle import NewTask, create_tasks

log = logging.getLogger(__name__)

TASK_NAMESPACE = uuid.UUID("906c0c0c-342d-472f-97a1-2c9b3d4eaab1")
DEFAULT_MAX_ATTEMPTS = 3
PARTITION_KEY_DIGITS = 12
ERROR_MESSAGE_LIMIT = 1024

# Blocked kinds the planner owns: it sets them on the job and clears them once resolved.
MISSING_HEAD = "MissingHeadObservation"
STALE_HEAD = "StaleHeadObservation"
DEAD_RANGES = "DeadRanges"
MISSING_RPC_METHOD = capabilities.MISSING_RPC_METHOD
PLANNER_ERROR_KINDS = (MISSING_HEAD, STALE_HEAD, DEAD_RANGES, MISSING_RPC_METHOD, MISSING_RPC_URL)

# a pool name -> why ranges of a stream on it cannot be extracted here (None: they can)
PoolCheck = Callable[[str], str | None]


def pool_url_check(settings: Settings, environ: Mapping[str, str] | None = None) -> PoolCheck:
    """Real extraction (the default) needs the pool's URL: a stream whose pool has none is
    blocked with ``MissingRpcUrl`` rather than planned (its ranges could only fail, and fake
    data is never a fallback). Under ``TRACE_CRYO_MODE=fake`` nothing is blocked."""

    def check(pool: str) -> str | None:
        if settings.cryo_mode == "fake" or rpc_pool_urls(pool, environ):
            return None
        return (
            f"{rpc_pool_env_var(pool)} is not set: real extraction needs pool {pool}'s RPC URL "
            "(or set TRACE_CRYO_MODE=fake for made-up data, marked fake)"
        )

    return check


def range_task_id(job_id: uuid.UUID | str, dataset_key: str, start: int, end: int) -> uuid.UUID:
    """Deterministic task id of a range (digest 6.4)."""
    return uuid.uuid5(TASK_NAMESPACE, f"chain_sync:{job_id}:{dataset_key}:{start}:{end}")


def range_partition_key(start: int, end: int) -> str:
    """Dagster partition key of an end-exclusive range: ``000000000000-000000001000``.

    Zero-padded so keys sort by block; no commas (Dagster forbids them).
    """
    return f"{start:0{PARTITION_KEY_DIGITS}d}-{end:0{PARTITION_KEY_DIGITS}d}"


def parse_partition_key(key: str) -> tuple[int, int]:
    """Inverse of ``range_partition_key``. Raises ``ValueError`` on anything else."""
    start, sep, end = key.partition("-")
    if not sep or not start.isdigit() or not end.isdigit():
        raise ValueError(f"not a range partition key: {key!r}")
    return int(start), int(end)


# --- pure decisions ---------------------------------------------------------------------


@dataclass(frozen=True)
class Eligibility:
    """How far a stream may be planned (exclusive end), or why it may not be planned at all."""

    end: int | None
    blocked_kind: str | None = None
    blocked_message: str | None = None


def eligible_end(
    *,
    mode: str,
    from_block: int,
    to_block: int | None,
    tail_lag: int | None,
    max_head_age_seconds: int | None,
    head_block: int | None,
    head_age_seconds: float | None,
) -> Eligibility:
    """The exclusive end up to which ranges may be planned.

    fixed_target: ``to_block``. follow_head: ``max(from_block, head + 1 - tail_lag)`` from a
    head observation no older than ``max_head_age_seconds``; a missing or stale observation
    blocks planning (fail closed, never guess).
    """
    if mode == "fixed_target":
        assert to_block is not None, "fixed_target jobs always have to_block"
        return Eligibility(to_block)
    assert tail_lag is not None and max_head_age_seconds is not None
    if head_block is None or head_age_seconds is None:
        return Eligibility(None, MISSING_HEAD, "no head observation yet for this chain and pool")
    if head_age_seconds > max_head_age_seconds:
        return Eligibility(
            None,
            STALE_HEAD,
            f"newest head observation ({head_block}) is {head_age_seconds:.0f}s old, "
            f"over max_head_age_seconds={max_head_age_seconds}",
        )
    return Eligibility(max(from_block, head_block + 1 - tail_lag))


def plan_ranges(
    *, cursor: int, end: int, chunk_size: int, slots: int, limit: int
) -> list[tuple[int, int]]:
    """Up to ``min(slots, limit)`` consecutive ranges ``[cursor, min(end, cursor+chunk))``.

    Ranges are aligned to the cursor; the last one is cut at ``end`` (follow_head), and the
    next tick continues from there.
    """
    ranges: list[tuple[int, int]] = []
    start = cursor
    while len(ranges) < min(slots, limit) and start < end:
        stop = min(end, start + chunk_size)
        ranges.append((start, stop))
        start = stop
    return ranges


# --- results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedRange:
    job_id: uuid.UUID
    job_name: str
    dataset_key: str
    dataset_uuid: uuid.UUID
    range_start: int
    range_end: int
    task_id: uuid.UUID
    epoch_blocks: int

    @property
    def partition_key(self) -> str:
        return range_partition_key(self.range_start, self.range_end)

    @property
    def epoch_keys(self) -> list[str]:
        """Dagster partition keys of the range's epochs (``chain_sync.epochs``; usually one)."""
        first = self.range_start - self.range_start % self.epoch_blocks
        return [
            range_partition_key(a, a + self.epoch_blocks)
            for a in range(first, self.range_end, self.epoch_blocks)
        ]


@dataclass(frozen=True)
class StreamPlan:
    """What one stream's planning transaction did (or why it did nothing)."""

    job_id: uuid.UUID
    job_name: str
    dataset_key: str
    next_block: int
    eligible_end: int | None
    inflight: int
    planned: tuple[PlannedRange, ...] = ()
    blocked_kind: str | None = None
    blocked_message: str | None = None


@dataclass(frozen=True)
class PlanResult:
    streams: tuple[StreamPlan, ...] = field(default_factory=tuple)

    @property
    def planned(self) -> list[PlannedRange]:
        """Every range planned by this tick, in planning order."""
        return [r for s in self.streams for r in s.planned]


# --- the tick ---------------------------------------------------------------------------


@translates_db_errors("chain_sync plan_tick")
def plan_tick(
    conn: Connection[Any],
    *,
    org_id: str | uuid.UUID | None = None,
    limit: int = 200,
    total_limit: int | None = None,
    pool_check: PoolCheck | None = None,
) -> PlanResult:
    """Plan every enabled job's active streams (of one org, or all orgs).

    ``limit`` caps ranges per stream per tick, ``total_limit`` ranges per tick overall, so a
    tick stays small. ``pool_check`` (``pool_url_check``) blocks streams whose pool cannot be
    extracted from. ``conn`` must not be inside a transaction: each stream commits its own.
    """
    with conn.transaction():
        targets = conn.execute(q("chain_sync", "plannable_streams"), {"org_id": org_id}).fetchall()
    plans: list[StreamPlan] = []
    budget = total_limit
    blocked_by_job: dict[uuid.UUID, StreamPlan | None] = {}
    for job_id, dataset_key in targets:
        if budget is not None and budget <= 0:
            break
        plan = plan_stream(
            conn,
            job_id,
            dataset_key,
            limit=limit if budget is None else min(limit, budget),
            pool_check=pool_check,
        )
        if plan is None:
            continue
        plans.append(plan)
        if budget is not None:
            budget -= len(plan.planned)
        if blocked_by_job.get(job_id) is None:
            blocked_by_job[job_id] = plan if plan.blocked_kind else None
    for job_id, blocked in blocked_by_job.items():
        _record_job_error(conn, job_id, blocked)
    return PlanResult(tuple(plans))


@translates_db_errors("chain_sync plan_stream")
def plan_stream(
    conn: Connection[Any],
    job_id: uuid.UUID,
    dataset_key: str,
    *,
    limit: int,
    pool_check: PoolCheck | None = None,
) -> StreamPlan | None:
    """Plan one stream in one transaction; None if the job is paused or the stream inactive."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        job = cur.execute(q("chain_sync", "share_lock_job"), {"job_id": job_id}).fetchone()
        if job is None:
            return None
        stream = cur.execute(
            q("chain_sync", "lock_stream_cursor"), {"job_id": job_id, "dataset_key": dataset_key}
        ).fetchone()
        if stream is None:
            return None
        head: dict[str, Any] | None = None
        if job["mode"] == "follow_head":
            head = cur.execute(
                q("chain_sync", "head_for_pool"),
                {
                    "org_id": job["org_id"],
                    "chain_id": job["chain_id"],
                    "rpc_pool": stream["rpc_pool"],
                },
            ).fetchone()
        elig = eligible_end(
            mode=job["mode"],
            from_block=job["from_block"],
            to_block=job["to_block"],
            tail_lag=job["tail_lag"],
            max_head_age_seconds=job["max_head_age_seconds"],
            head_block=head["head_block"] if head else None,
            head_age_seconds=head["age_seconds"] if head else None,
        )
        cursor = stream["next_block"]
        counts = cur.execute(
            q("chain_sync", "stream_range_counts"), {"job_id": job_id, "dataset_key": dataset_key}
        ).fetchone()
        assert counts is not None
        inflight = counts["inflight"]
        base = {
            "job_id": job_id,
            "job_name": job["name"],
            "dataset_key": dataset_key,
            "eligible_end": elig.end,
            "inflight": inflight,
        }
        if elig.end is None:
            return StreamPlan(
                next_block=cursor,
                blocked_kind=elig.blocked_kind,
                blocked_message=elig.blocked_message,
                **base,
            )
        no_url = pool_check(stream["rpc_pool"]) if pool_check and stream["rpc_pool"] else None
        if no_url is not None:
            return StreamPlan(
                next_block=cursor, blocked_kind=MISSING_RPC_URL, blocked_message=no_url, **base
            )
        lacking = _lacking_capability(cur, job, stream)
        if lacking is not None:
            return StreamPlan(
                next_block=cursor,
                blocked_kind=MISSING_RPC_METHOD,
                blocked_message=lacking,
                **base,
            )
        if counts["dead"]:
            return StreamPlan(
                next_block=cursor,
                blocked_kind=DEAD_RANGES,
                blocked_message=f"{counts['dead']} dead range(s) in stream {dataset_key}; "
                "planning stops until they are revived",
                **base,
            )
        ranges = plan_ranges(
            cursor=cursor,
            end=elig.end,
            chunk_size=stream["chunk_size"],
            slots=stream["max_inflight"] - inflight,
            limit=limit,
        )
        planned = _schedule(conn, job, stream, ranges)
        if ranges:
            conn.execute(
                q("chain_sync", "advance_cursor"),
                {"job_id": job_id, "dataset_key": dataset_key, "next_block": ranges[-1][1]},
            )
            cursor = ranges[-1][1]
    done = tuple(planned)
    if done:
        log.info(
            "planned ranges",
            extra={
                "job_id": str(job_id),
                "dataset_key": dataset_key,
                "ranges": len(done),
                "next_block": cursor,
            },
        )
    return StreamPlan(next_block=cursor, planned=done, **{**base, "inflight": inflight + len(done)})


def _lacking_capability(cur: Any, job: dict[str, Any], stream: dict[str, Any]) -> str | None:
    """Why the stream's pool cannot serve its dataset, per the last capability probe."""
    if not capabilities.DATASET_NEEDS.get(stream["cryo_dataset_name"]):
        return None
    rows = cur.execute(
        q("rpc_capabilities", "missing_for_pool"),
        {"org_id": job["org_id"], "chain_id": job["chain_id"], "rpc_pool": stream["rpc_pool"]},
    ).fetchall()
    missing = {row["capability"]: row["detail"] for row in rows}
    return capabilities.blocked_reason(
        stream["cryo_dataset_name"], stream["rpc_pool"], job["chain_id"], missing
    )


def task_payload(
    job: dict[str, Any], stream: dict[str, Any], start: int, end: int
) -> dict[str, Any]:
    """The ``cryo_ingest`` task payload of a planned range (JSON-ready)."""
    return CryoIngestTask(
        operator=OPERATOR,
        chain_id=job["chain_id"],
        job_id=str(job["job_id"]),
        job_name=job["name"],
        dataset_key=stream["dataset_key"],
        dataset_uuid=uuid.UUID(str(stream["dataset_uuid"])),
        cryo_dataset_name=stream["cryo_dataset_name"],
        rpc_pool=stream["rpc_pool"],
        range_start=start,
        range_end=end,
        config_hash=stream["config_hash"],
        cryo_options=stream["cryo_options"] or {},
    ).to_json()


def _schedule(
    conn: Connection[Any],
    job: dict[str, Any],
    stream: dict[str, Any],
    ranges: list[tuple[int, int]],
) -> list[PlannedRange]:
    """Record the ranges of one planning pass and create their tasks (+ wake-ups) together
    (``create_tasks``: two statements for the pass, not two per range). A range an earlier
    tick already planned is skipped; a task that exists already must carry the same payload."""
    new: list[tuple[int, int, uuid.UUID, dict[str, Any]]] = []
    for start, end in ranges:
        task_id = range_task_id(job["job_id"], stream["dataset_key"], start, end)
        inserted = conn.execute(
            q("chain_sync", "insert_range"),
            {
                "job_id": job["job_id"],
                "dataset_key": stream["dataset_key"],
                "range_start": start,
                "range_end": end,
                "task_id": task_id,
            },
        ).fetchone()
        if inserted is not None:  # else planned by an earlier tick; the cursor still moves on
            new.append((start, end, task_id, task_payload(job, stream, start, end)))
    max_attempts = job["max_attempts"] or DEFAULT_MAX_ATTEMPTS
    created = set(
        create_tasks(
            conn,
            [
                NewTask(task_id, OPERATOR, payload, max_attempts, job_id=job["job_id"])
                for _, _, task_id, payload in new
            ],
        )
    )
    for _, _, task_id, payload in new:
        if task_id in created:
            continue
        row = conn.execute(q("tasks", "task_payload"), {"task_id": task_id}).fetchone()
        if row is None or row[0] != OPERATOR or row[1] != payload:
            raise InvalidPayload(
                f"task payload mismatch for existing task {task_id}", task_id=str(task_id)
            )
    return [
        PlannedRange(
            job_id=job["job_id"],
            job_name=job["name"],
            dataset_key=stream["dataset_key"],
            dataset_uuid=stream["dataset_uuid"],
            range_start=start,
            range_end=end,
            task_id=task_id,
            epoch_blocks=job["epoch_blocks"],
        )
        for start, end, task_id, _ in new
    ]


def _record_job_error(conn: Connection[Any], job_id: uuid.UUID, blocked: StreamPlan | None) -> None:
    with conn.transaction():
        if blocked is None:
            conn.execute(
                q("chain_sync", "clear_job_error"),
                {"job_id": job_id, "kinds": list(PLANNER_ERROR_KINDS)},
            )
            return
        message = f"{blocked.dataset_key}: {blocked.blocked_message}"
        cur = conn.execute(
            q("chain_sync", "set_job_error"),
            {
                "job_id": job_id,
                "kind": blocked.blocked_kind,
                "message": message[:ERROR_MESSAGE_LIMIT],
            },
        )
        if cur.rowcount:
            log.warning(
                "chain_sync stream blocked",
                extra={"job_id": str(job_id), "kind": blocked.blocked_kind, "detail": message},
            )
