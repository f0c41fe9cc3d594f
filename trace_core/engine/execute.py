"""Executing tasks: claim, heartbeat, run the operator, complete with fencing.

A duplicate wake-up or a duplicate run finds the task leased or finished and returns
``skipped`` without side effects; a lease lost mid-run yields ``stale``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

from trace_core import profile
from trace_core.engine import registry as operator_registry
from trace_core.engine.credentials import attempt_credentials
from trace_core.errors import (
    FatalError,
    InvalidPayload,
    LeaseConflict,
    StaleAttempt,
    TraceError,
    UnknownTask,
)
from trace_core.operators.base import OperatorContext, OperatorRegistry
from trace_core.runtime import Runtime
from trace_core.tasks import lifecycle
from trace_core.tasks.keepalive import LeaseHeartbeat, lease_heartbeat
from trace_core.tasks.lifecycle import Lease

log = logging.getLogger(__name__)

OutcomeStatus = Literal["succeeded", "retry", "dead", "skipped", "stale"]
# Where claims and completions get their state connection: ``rt.state`` (a new connection
# each time) unless a run passes its ``rt.reused_state()``.
StateConn = Callable[[], AbstractContextManager[Any]]


@dataclass(frozen=True)
class TaskOutcome:
    task_id: uuid.UUID
    status: OutcomeStatus
    attempt: int | None = None
    operator: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float | None = None  # the attempt's run time (claim to completion), if it ran
    org_id: uuid.UUID | None = None  # the task's org, once claimed


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
    return claim_tasks(rt, [task_id])[0]


def claim_tasks(
    rt: Runtime, task_ids: list[uuid.UUID], *, state: StateConn | None = None
) -> list[Lease | TaskOutcome]:
    """Claim each of ``task_ids`` (in order) for a new attempt, each committed on its own on
    one connection (a queued task's claim is one autocommitted statement: no BEGIN/COMMIT
    round trips); a task that is not claimable yields ``skipped``."""
    out: list[Lease | TaskOutcome] = []
    if not task_ids:
        return out
    with (state or rt.state)() as conn:
        for task_id in task_ids:
            try:
                with profile.phase("claim", task_id):
                    lease = lifecycle.claim(conn, task_id, lease_seconds=rt.settings.lease_seconds)
            except (LeaseConflict, UnknownTask) as exc:
                profile.finish(task_id, -1, outcome="skipped")
                out.append(TaskOutcome(task_id, "skipped", error=str(exc)))
                continue
            log.info(
                "task claimed",
                extra={
                    "task_id": str(task_id),
                    "attempt": lease.attempt,
                    "operator": lease.operator,
                },
            )
            out.append(lease)
    return out


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
        rt, claimed, registry or operator_registry.default_registry(), start_heartbeat(rt, claimed)
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
    registry = registry or operator_registry.default_registry()
    _ = rt.dbs, rt.store  # built once, before threads share the runtime
    with rt.reused_state() as state:
        yield from _execute_batch(rt, task_ids, concurrency, registry, on_claimed, state)


def claim_and_beat(
    rt: Runtime,
    task_ids: list[uuid.UUID],
    state: StateConn,
    on_skipped: Callable[[TaskOutcome], None],
    on_claimed: Callable[[], None] | None,
    leases: Sequence[Lease] = (),
) -> list[tuple[Lease, LeaseHeartbeat]]:
    """Claim ``task_ids`` and start the heartbeat of each lease, those of ``leases`` (claimed
    already, by a take) first; a task not claimable goes to ``on_skipped``; ``on_claimed``
    runs once all are claimed (a run acks its wake-ups there). If anything raises, the
    heartbeats started stop (their leases then expire)."""
    claimed: list[tuple[Lease, LeaseHeartbeat]] = []
    try:
        for lease in leases:
            log.info(
                "task claimed",
                extra={
                    "task_id": str(lease.task_id),
                    "attempt": lease.attempt,
                    "operator": lease.operator,
                },
            )
            claimed.append((lease, start_heartbeat(rt, lease)))
        for got in claim_tasks(rt, task_ids, state=state):
            if isinstance(got, TaskOutcome):
                on_skipped(got)
            else:
                claimed.append((got, start_heartbeat(rt, got)))
        if on_claimed is not None:
            on_claimed()
    except BaseException:
        for _lease, hb in claimed:
            hb.stop()
        raise
    return claimed


def _execute_batch(
    rt: Runtime,
    task_ids: list[uuid.UUID],
    concurrency: int,
    registry: OperatorRegistry,
    on_claimed: Callable[[], None] | None,
    state: StateConn,
) -> Iterator[TaskOutcome]:
    skipped: list[TaskOutcome] = []
    claimed = claim_and_beat(rt, task_ids, state, skipped.append, on_claimed)
    try:
        yield from skipped
    except BaseException:  # the consumer stopped: the claimed leases stop being extended
        for _lease, hb in claimed:
            hb.stop()
        raise
    if not claimed:
        return
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, min(concurrency, len(claimed))), thread_name_prefix="trace-task"
    ) as pool:
        futures = [pool.submit(_timed, rt, lease, registry, hb, state) for lease, hb in claimed]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()


def _timed(
    rt: Runtime, lease: Lease, registry: OperatorRegistry, hb: LeaseHeartbeat, state: StateConn
) -> TaskOutcome:
    """``run_claimed`` with the attempt's run time in the outcome (the worker's log line)."""
    started = time.monotonic()
    outcome = run_claimed(rt, lease, registry, hb, state=state)
    return dataclasses.replace(outcome, seconds=time.monotonic() - started)


def run_claimed(
    rt: Runtime,
    lease: Lease,
    registry: OperatorRegistry,
    hb: LeaseHeartbeat,
    *,
    state: StateConn | None = None,
) -> TaskOutcome:
    """Run a claimed task's operator to a fenced completion; stops ``hb`` before completing.
    The completion's connection comes from ``state`` (``rt``'s reused connections; default
    ``rt.state``), for an attempt of ``rt``'s org.

    Never raises for task-level failures (see ``execute_task``). The attempt runs as its
    task's org (``Runtime.for_org``): its rows, objects and tokens are that org's.
    """
    with profile.attempt(lease.task_id, lease.attempt, operator=lease.operator):
        org_rt = rt.for_org(lease.org_id)
        # ``state`` stamps ``rt``'s org: an attempt of another org opens its own connections
        conn = state if state is not None and org_rt is rt else org_rt.state
        outcome = _run_claimed(org_rt, lease, registry, hb, conn)
    return dataclasses.replace(outcome, org_id=lease.org_id)


def _run_claimed(
    rt: Runtime, lease: Lease, registry: OperatorRegistry, hb: LeaseHeartbeat, state: StateConn
) -> TaskOutcome:
    task_id = lease.task_id
    fields = {"task_id": str(task_id), "attempt": lease.attempt, "operator": lease.operator}
    try:
        try:
            hb.check()
            with profile.phase("token"):
                queries = registry.queries(lease.operator)
                token = capability_token_for(rt, lease) if queries else ""
            with profile.phase("credentials"):
                creds = attempt_credentials(rt, lease)  # None unless the Credential Broker is on
            with profile.phase("operator"):
                op = registry.get(lease.operator)
                completion = op(OperatorContext(rt, lease, hb.lost, token, credentials=creds))
        finally:
            with profile.phase("heartbeat stop"):
                hb.stop()
        if hb.lost.is_set():
            raise StaleAttempt(task_id, lease.attempt, "lease lost during execution")
        hooks = registry.success_hooks(lease.operator)
        if completion.commit is None and not hooks:
            # nothing else to commit: the completion's one statement is its own transaction
            # (one round trip, not BEGIN + statement + COMMIT)
            with profile.phase("commit"), state() as conn:
                lifecycle.complete_success(conn, lease, completion.outputs)
            outputs = completion.outputs
        else:
            with profile.phase("commit"), state() as conn, conn.transaction():
                if completion.commit is not None:
                    outputs = completion.commit(conn)
                else:
                    lifecycle.complete_success(conn, lease, completion.outputs)
                    outputs = completion.outputs
                for hook in hooks:
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
        return _fail(state, rt, registry, lease, exc)
    except (
        Exception
    ) as exc:  # an operator bug: recorded as a retryable failure, never swallowed silently
        log.exception("operator crashed", extra=fields)
        return _fail(state, rt, registry, lease, exc)


def _fail(
    state: StateConn, rt: Runtime, registry: OperatorRegistry, lease: Lease, exc: BaseException
) -> TaskOutcome:
    fatal = isinstance(exc, FatalError)
    message = f"{type(exc).__name__}: {exc}"
    try:
        with state() as conn, conn.transaction():
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
