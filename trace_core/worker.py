"""Executing tasks: receive wake-ups, claim, heartbeat, run the operator, complete with fencing.

Wake-ups are hints; the claim in Postgres state is the authority. A duplicate wake-up or a
duplicate run finds the task leased or finished and returns ``skipped`` without side effects.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from psycopg.rows import dict_row

from trace_core import builtin_operators, outbox
from trace_core.alerts.delivery import delivery_backlog
from trace_core.chain_sync import planner
from trace_core.chain_sync import retry as chain_sync_retry
from trace_core.errors import (
    FatalError,
    InvalidPayload,
    LeaseConflict,
    StaleAttempt,
    TraceError,
    UnknownTask,
)
from trace_core.operators.base import (  # re-exported: the contract lives in operators.base
    Completion,
    DeadHook,
    Operator,
    OperatorContext,
    OperatorRegistry,
    SuccessHook,
)
from trace_core.operators.payload import RangeLabel
from trace_core.queue.base import BUFFER_QUEUE, TASK_WAKEUP, Message
from trace_core.runtime import Runtime
from trace_core.tasks import lifecycle, recovery
from trace_core.tasks.keepalive import LeaseHeartbeat, lease_heartbeat
from trace_core.tasks.lifecycle import Lease

log = logging.getLogger(__name__)

__all__ = [
    "Completion",
    "DeadHook",
    "Operator",
    "OperatorContext",
    "OperatorRegistry",
    "SuccessHook",
    "TaskOutcome",
    "execute_batch",
    "execute_task",
]

OutcomeStatus = Literal["succeeded", "retry", "dead", "skipped", "stale"]


@dataclass(frozen=True)
class Wakeup:
    task_id: uuid.UUID
    generation: int
    message: Message


@dataclass(frozen=True)
class TaskInfo:
    """What the worker sensor needs to label a run (read from state, not from the message)."""

    task_id: uuid.UUID
    operator: str
    status: str
    attempt: int
    payload: dict[str, Any]


@dataclass(frozen=True)
class TaskOutcome:
    task_id: uuid.UUID
    status: OutcomeStatus
    attempt: int | None = None
    operator: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


# --- wake-ups ---------------------------------------------------------------------------


def receive_wakeups(rt: Runtime, max_messages: int) -> list[Wakeup]:
    """Receive up to ``max_messages`` wake-ups; malformed ones are acked and dropped."""
    messages = rt.queue.receive(
        TASK_WAKEUP, max_messages, visibility_timeout=rt.settings.visibility_timeout_seconds
    )
    wakeups: list[Wakeup] = []
    bad: list[Message] = []
    for msg in messages:
        try:
            wakeups.append(
                Wakeup(
                    uuid.UUID(str(msg.payload["task_id"])), int(msg.payload.get("wakeup", 0)), msg
                )
            )
        except (KeyError, ValueError, TypeError):
            log.warning("dropping malformed wake-up", extra={"message_id": msg.message_id})
            bad.append(msg)
    if bad:
        rt.queue.ack_batch(bad)
    return wakeups


def ack_wakeups(rt: Runtime, wakeups: list[Wakeup]) -> None:
    if wakeups:
        rt.queue.ack_batch([w.message for w in wakeups])


def record_runs(rt: Runtime, runs: list[tuple[str, list[uuid.UUID]]]) -> None:
    """Record requested worker runs (run key -> task ids) before their wake-ups are acked."""
    if runs:
        with rt.state() as conn, conn.transaction():
            recovery.record_worker_runs(conn, runs)


def recover_stranded(rt: Runtime, is_alive: Callable[[str], bool], grace_seconds: float) -> int:
    """Re-wake the tasks of requested runs that will never claim them, and publish now.

    ``is_alive(run_key)`` asks the run launcher whether that run exists and has not ended.
    Runs younger than ``min(grace_seconds, TRACE_LEASE_SECONDS)`` are left alone (their run
    may not be recorded yet). Returns the number of tasks re-woken.
    """
    grace = min(float(rt.settings.lease_seconds), grace_seconds)
    with rt.state() as conn:
        stranded = [
            run
            for run in recovery.open_worker_runs(conn, grace_seconds=grace)
            if not is_alive(run.run_key)
        ]
        if not stranded:
            return 0
        with conn.transaction():
            rewoken = recovery.rewake_stranded(conn, stranded)
        outbox.drain_all(conn, rt.queue, batch_size=rt.settings.outbox_batch_size)
    return rewoken


def task_infos(rt: Runtime, task_ids: list[uuid.UUID]) -> dict[uuid.UUID, TaskInfo]:
    if not task_ids:
        return {}
    with rt.state() as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT task_id, operator, status, attempt, payload FROM state.tasks WHERE task_id = ANY(%s)",
            (task_ids,),
        ).fetchall()
    return {r["task_id"]: TaskInfo(**r) for r in rows}


@dataclass(frozen=True)
class WorkerRun:
    """One worker run to request: a deterministic run key, its batch, and labels for the UI."""

    run_key: str
    task_ids: list[str]
    tags: dict[str, str]


def run_labels(infos: list[TaskInfo]) -> dict[str, str]:
    """Run labels naming job, stream, range, task and attempt (first task's, plus a count)."""
    first = infos[0]
    label = RangeLabel.of(first.payload)
    tags = {
        "trace/operator": first.operator,
        "trace/task_id": str(first.task_id),
        "trace/attempt": str(first.attempt + 1),
        "trace/batch_size": str(len(infos)),
    }
    if label.job_name is not None:
        tags["trace/job"] = label.job_name
    if label.dataset_key is not None:
        tags["trace/stream"] = label.dataset_key
    if label.block_range is not None:
        tags["trace/range"] = f"{label.range_start}-{label.range_end}"
    return tags


def plan_worker_runs(rt: Runtime, max_runs: int) -> list[WorkerRun]:
    """Turn wake-ups into worker runs of ``worker_batch_size`` tasks each, then ack them.

    Tasks already succeeded or dead are dropped; a task woken twice runs once, keyed by its
    newest wake-up generation (so a re-wake gets a new run key). Each run key is recorded with
    its tasks before the ack, so a run that never claims them is noticed (``recover_stranded``)
    instead of waiting for the re-wake.
    """
    batch = rt.settings.worker_batch_size
    wakeups = receive_wakeups(rt, batch * max_runs)
    infos = task_infos(rt, list({w.task_id for w in wakeups}))
    runnable: dict[str, tuple[TaskInfo, int]] = {}
    for w in wakeups:
        info = infos.get(w.task_id)
        if info is None or info.status in ("succeeded", "dead"):
            continue
        previous = runnable.get(str(w.task_id), (info, 0))[1]
        runnable[str(w.task_id)] = (info, max(w.generation, previous))
    items = sorted(runnable.items())
    runs: list[WorkerRun] = []
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        key_src = ",".join(f"{tid}:{gen}" for tid, (_, gen) in chunk)
        runs.append(
            WorkerRun(
                run_key=hashlib.sha256(key_src.encode()).hexdigest()[:32],
                task_ids=[tid for tid, _ in chunk],
                tags=run_labels([info for _, (info, _) in chunk]),
            )
        )
    record_runs(rt, [(r.run_key, [uuid.UUID(t) for t in r.task_ids]) for r in runs])
    ack_wakeups(rt, wakeups)
    return runs


# Queues whose messages are work still owed before the system is idle (task wake-ups are
# covered by the task table itself).
IDLE_QUEUES: tuple[str, ...] = (BUFFER_QUEUE, "dataset_events")


@dataclass(frozen=True)
class OutstandingWork:
    """What is still owed: tasks queued or running (not paused); pending outbox rows, messages
    on ``IDLE_QUEUES`` and alert deliveries due now; and dead tasks (owed to a person)."""

    active: int
    pending: int
    dead: int

    @property
    def idle(self) -> bool:
        return self.active == 0 and self.pending == 0


def outstanding_work(rt: Runtime) -> OutstandingWork:
    """``OutstandingWork`` now (``trace-lite run --until-idle`` stops when it is idle)."""
    with rt.state() as conn:
        active, dead, pending = recovery.outstanding_counts(conn)
    queued = 0
    for name in IDLE_QUEUES:
        stats = rt.queue.stats(name)
        queued += stats.depth + stats.in_flight
    return OutstandingWork(active, pending + queued + delivery_backlog(rt), dead)


@dataclass(frozen=True)
class MoreWork:
    """Work a worker run takes on after its batch: the ranges it planned (job, stream, range
    start, range end) and the woken tasks it will claim. ``wakeups`` are acked only once the
    tasks are claimed (``ack``), so a run that dies first leaves them to be redelivered."""

    planned: list[tuple[str, str, int, int]]
    task_ids: list[uuid.UUID]
    wakeups: list[Wakeup]

    def ack(self, rt: Runtime) -> None:
        ack_wakeups(rt, self.wakeups)


def take_more_work(rt: Runtime, max_tasks: int) -> MoreWork:
    """Plan the ranges the batch just freed (``max_inflight``), publish their wake-ups, and
    receive up to ``max_tasks`` runnable woken tasks (succeeded or dead ones are acked and
    dropped). What a run does instead of ending and waiting for the next sensor ticks."""
    s = rt.settings
    with rt.state() as conn:
        result = planner.plan_tick(
            conn, org_id=s.org_id, limit=s.dispatch_batch_size, pool_check=planner.pool_url_check(s)
        )
        outbox.drain_all(conn, rt.queue, batch_size=s.outbox_batch_size)
    planned = [(p.job_name, p.dataset_key, p.range_start, p.range_end) for p in result.planned]
    wakeups = receive_wakeups(rt, max_tasks)
    infos = task_infos(rt, list({w.task_id for w in wakeups}))
    runnable = {
        w.task_id
        for w in wakeups
        if w.task_id in infos and infos[w.task_id].status not in ("succeeded", "dead")
    }
    done = [w for w in wakeups if w.task_id not in runnable]
    ack_wakeups(rt, done)
    return MoreWork(planned, sorted(runnable), [w for w in wakeups if w.task_id in runnable])


# --- execution --------------------------------------------------------------------------


def capability_token_for(rt: Runtime, lease: Lease) -> str:
    """The attempt's token, pinned to the payload's ``grants``; ``InvalidPayload`` if malformed."""
    from pydantic import ValidationError

    from trace_core.query.tokens import DatasetPin, issue_task_token

    raw = lease.payload.get("grants", [])
    try:
        if not isinstance(raw, list):
            raise TypeError("grants must be a list")
        pins = [DatasetPin.model_validate(g) for g in raw]
    except (TypeError, ValidationError) as exc:
        raise InvalidPayload(f"grants: {exc}", field="grants") from None
    return issue_task_token(rt.settings, lease.task_id, lease.attempt, pins)


def claim_task(rt: Runtime, task_id: uuid.UUID) -> Lease | TaskOutcome:
    """Claim ``task_id`` for a new attempt; a task that is not claimable yields ``skipped``."""
    try:
        with rt.state() as conn, conn.transaction():
            lease = lifecycle.claim(conn, task_id, lease_seconds=rt.settings.lease_seconds)
    except (LeaseConflict, UnknownTask) as exc:
        return TaskOutcome(task_id, "skipped", error=str(exc))
    log.info(
        "task claimed",
        extra={"task_id": str(task_id), "attempt": lease.attempt, "operator": lease.operator},
    )
    return lease


def start_heartbeat(rt: Runtime, lease: Lease) -> LeaseHeartbeat:
    """A running heartbeat for ``lease``; the caller (or ``run_claimed``) stops it."""
    hb = LeaseHeartbeat(
        lease_heartbeat(rt.settings, lease, rt.state), rt.settings.heartbeat_seconds, lease
    )
    hb.start()
    return hb


def execute_task(
    rt: Runtime, task_id: uuid.UUID, registry: OperatorRegistry | None = None
) -> TaskOutcome:
    """Claim ``task_id`` and run its operator to a fenced completion.

    Never raises for task-level failures: they become a ``retry``/``dead`` outcome recorded
    in state. A task that is not claimable yields ``skipped``; a lease lost mid-run ``stale``.
    """
    claimed = claim_task(rt, task_id)
    if isinstance(claimed, TaskOutcome):
        return claimed
    return run_claimed(
        rt, claimed, registry or builtin_operators.default_registry(), start_heartbeat(rt, claimed)
    )


def execute_batch(
    rt: Runtime,
    task_ids: list[uuid.UUID],
    *,
    concurrency: int,
    registry: OperatorRegistry | None = None,
    on_claimed: Callable[[], None] | None = None,
) -> Iterator[TaskOutcome]:
    """Claim every task of a batch at once, call ``on_claimed``, then run them ``concurrency``
    at a time.

    Claiming up front puts each task of the batch under its own heartbeated lease from the
    start, so if the process dies, every task it was handed is reaped within one lease
    (``TRACE_LEASE_SECONDS``), whether or not its turn had come. Yields each outcome as it
    completes (skipped ones first); each task keeps its own lease, heartbeat and fencing.
    """
    registry = registry or builtin_operators.default_registry()
    _ = rt.dbs, rt.store  # built once, before threads share the runtime
    claimed: list[tuple[Lease, LeaseHeartbeat]] = []
    try:
        for task_id in task_ids:
            got = claim_task(rt, task_id)
            if isinstance(got, TaskOutcome):
                yield got
            else:
                claimed.append((got, start_heartbeat(rt, got)))
        if on_claimed is not None:
            on_claimed()
    except BaseException:
        for _lease, hb in claimed:
            hb.stop()
        raise
    if not claimed:
        return
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, min(concurrency, len(claimed))), thread_name_prefix="trace-task"
    ) as pool:
        futures = [pool.submit(run_claimed, rt, lease, registry, hb) for lease, hb in claimed]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()


def run_claimed(
    rt: Runtime, lease: Lease, registry: OperatorRegistry, hb: LeaseHeartbeat
) -> TaskOutcome:
    """Run a claimed task's operator to a fenced completion; stops ``hb`` before completing.

    Never raises for task-level failures (see ``execute_task``).
    """
    task_id = lease.task_id
    fields = {"task_id": str(task_id), "attempt": lease.attempt, "operator": lease.operator}
    try:
        try:
            hb.check()
            token = capability_token_for(rt, lease)
            completion = registry.get(lease.operator)(OperatorContext(rt, lease, hb.lost, token))
        finally:
            hb.stop()
        if hb.lost.is_set():
            raise StaleAttempt(task_id, lease.attempt, "lease lost during execution")
        with rt.state() as conn, conn.transaction():
            if completion.commit is not None:
                outputs = completion.commit(conn)
            else:
                lifecycle.complete_success(conn, lease, completion.outputs)
                outputs = completion.outputs
            for hook in registry.success_hooks(lease.operator):
                hook(conn, lease, outputs)
        log.info("task succeeded", extra=fields)
        return TaskOutcome(
            task_id, "succeeded", lease.attempt, lease.operator, lease.payload, outputs
        )
    except StaleAttempt as exc:
        log.warning("stale attempt: result discarded", extra=fields)
        return TaskOutcome(
            task_id, "stale", lease.attempt, lease.operator, lease.payload, error=str(exc)
        )
    except TraceError as exc:
        return _fail(rt, registry, lease, exc)
    except (
        Exception
    ) as exc:  # an operator bug: recorded as a retryable failure, never swallowed silently
        log.exception("operator crashed", extra=fields)
        return _fail(rt, registry, lease, exc)


def _fail(rt: Runtime, registry: OperatorRegistry, lease: Lease, exc: BaseException) -> TaskOutcome:
    fatal = isinstance(exc, FatalError)
    message = f"{type(exc).__name__}: {exc}"
    try:
        with rt.state() as conn, conn.transaction():
            decision = lifecycle.complete_failure(
                conn,
                lease,
                error=message,
                fatal=fatal,
                policy=rt.retry_policy,
                kind=getattr(exc, "code", None),
            )
            if decision == "dead":
                for hook in registry.dead_hooks(lease.operator):
                    hook(conn, lease)
    except StaleAttempt as stale:
        return TaskOutcome(
            lease.task_id, "stale", lease.attempt, lease.operator, lease.payload, error=str(stale)
        )
    status: OutcomeStatus = "dead" if decision == "dead" else "retry"
    log.warning(
        "task failed",
        extra={"task_id": str(lease.task_id), "attempt": lease.attempt, "decision": decision},
    )
    return TaskOutcome(
        lease.task_id, status, lease.attempt, lease.operator, lease.payload, error=message
    )


# --- one range on request ---------------------------------------------------------------


@dataclass(frozen=True)
class RangeRun:
    """A range executed on request (the stream asset's partition): the task's outcome, whether
    the range was revived first, and whether it had already committed (nothing ran)."""

    outcome: TaskOutcome
    revived: bool = False
    already_committed: bool = False


def run_range(
    rt: Runtime,
    job_name: str,
    dataset_key: str,
    partition_key: str,
    *,
    detail: str | None = None,
    registry: OperatorRegistry | None = None,
) -> RangeRun:
    """Execute the range behind a stream partition now: revive its task if dead, claim and run
    it in this process. A committed range is reported as is. Raises ``ChainSyncJobNotFound``/
    ``UnknownStream``/``UnknownRange`` for a partition that is no planned range; task failures
    come back in the outcome, never raised."""
    prepared = chain_sync_retry.prepare_range(
        rt, job_name, dataset_key, partition_key, detail=detail
    )
    if prepared.committed is not None:
        row = prepared.committed
        done = TaskOutcome(
            row["task_id"],
            "succeeded",
            row["attempt"],
            "cryo_ingest",
            row["payload"] or {},
            row["outputs"] or {},
        )
        return RangeRun(done, already_committed=True)
    outcome = execute_task(rt, prepared.task_id, registry)
    return RangeRun(outcome, revived=prepared.revived)
