"""Task lifecycle on Postgres state, with strict attempt fencing.

Every function takes a connection and runs inside the caller's transaction, so durable intent
and its outbox row (or a completion and the dataset version it commits) land atomically.
Lease decisions use the database clock (``now()``), never the worker's.

States: ``queued -> running -> succeeded | dead``; a failed or expired attempt goes back to
``queued`` (attempt kept, bumped on the next claim) until ``max_attempts`` is reached. A revive
(``trace_core.chain_sync.revive``) turns ``dead`` back into ``queued`` with a fresh budget: attempt
numbers keep counting up, and ``attempt_base`` (attempts spent before the latest revive) is
subtracted wherever the budget and the backoff are decided.

Durability: ``create_task``, ``claim``, failures, the reaper and every transaction that writes
an outbox row commit durably (the session's ``synchronous_commit``). A claim must: a claim a
crash forgot could hand the same attempt number to a second worker. ``complete_success``
commits asynchronously (``synchronous_commit=off`` for its transaction, unless that
transaction wrote, or later writes, an outbox row: see ``tasks.complete_success`` and
``outbox.insert_outbox``). A Postgres crash before the WAL writer flushes it (at most
~3 x ``wal_writer_delay``) may forget such a completion, and with it only what was committed
after it asynchronously too: WAL is flushed in order, so the next durable commit on the server
(any claim, any outbox write) makes it durable. What is left is the running attempt, the same
state as a worker killed just before completing, which recovery already handles: its lease
expires, ``reap`` requeues it and it runs again to the same end (operators are idempotent per
task; what an operator commits itself, e.g. parquet_compact, is durable on its own).
Completions that commit a dataset version (``commit``, ``finish_succeeded``) stay durable:
readers act on them at once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import Connection
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from trace_core.db.errors import translates_db_errors
from trace_core.db.queries import q
from trace_core.errors import LeaseConflict, StaleAttempt, UnknownTask
from trace_core.outbox import enqueue_wakeup, enqueue_wakeups
from trace_core.tasks.retry import RetryPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    """Proof that one attempt holds a task. Every completion must present it."""

    task_id: uuid.UUID
    attempt: int
    lease_token: uuid.UUID
    lease_expires_at: datetime
    operator: str
    payload: dict[str, Any] = field(default_factory=dict)
    max_attempts: int = 3
    attempt_base: int = 0
    org_id: uuid.UUID | None = None  # the task's org: its attempt runs as that org

    @property
    def budget_attempt(self) -> int:
        """This attempt's number within the current budget (1 = first since create or revive)."""
        return self.attempt - self.attempt_base


@translates_db_errors("task create_task")
def create_task(
    conn: Connection[Any],
    *,
    task_id: uuid.UUID,
    operator: str,
    payload: dict[str, Any],
    max_attempts: int = 3,
    job_id: uuid.UUID | None = None,
    paused: bool = False,
) -> bool:
    """Insert a task and its first wake-up (outbox) row; a repeat with the same id is a no-op.

    Returns True when the task was new. Raises ``InvalidPayload``-free: payload equality of a
    repeat is the caller's contract (deterministic ids imply identical payloads).
    """
    row = conn.execute(
        q("tasks", "insert_task"),
        {
            "task_id": task_id,
            "operator": operator,
            "payload": Jsonb(payload),
            "max_attempts": max_attempts,
            "job_id": job_id,
            "paused": paused,
        },
    ).fetchone()
    if row is None:
        return False
    if not paused:
        enqueue_wakeup(conn, task_id=task_id, generation=1)
    return True


@dataclass(frozen=True)
class NewTask:
    """One task for ``create_tasks`` (the arguments of ``create_task``)."""

    task_id: uuid.UUID
    operator: str
    payload: dict[str, Any]
    max_attempts: int = 3
    job_id: uuid.UUID | None = None
    paused: bool = False


@translates_db_errors("task create_tasks")
def create_tasks(conn: Connection[Any], tasks: Sequence[NewTask]) -> list[uuid.UUID]:
    """``create_task`` for many tasks in two statements (tasks, then the new unpaused ones'
    wake-ups), in the caller's transaction; returns the ids that were new, in input order."""
    if not tasks:
        return []
    rows = conn.execute(
        q("tasks", "insert_tasks"),
        {
            "task_ids": [t.task_id for t in tasks],
            "operators": [t.operator for t in tasks],
            "payloads": [Jsonb(t.payload) for t in tasks],
            "max_attempts": [t.max_attempts for t in tasks],
            "job_ids": [t.job_id for t in tasks],
            "paused": [t.paused for t in tasks],
        },
    ).fetchall()
    new = {task_id: paused for task_id, paused in rows}
    enqueue_wakeups(conn, [(t, 1) for t, paused in new.items() if not paused])
    return [t.task_id for t in tasks if t.task_id in new]


@translates_db_errors("task claim")
def claim(conn: Connection[Any], task_id: uuid.UUID, *, lease_seconds: float) -> Lease:
    """Grant a lease to a new attempt (attempt + 1), in the caller's transaction, or on an
    autocommit connection outside one: the common case (queued, due, attempts left) is one
    statement, committed on its own; the other cases then run in a transaction of their own.

    Raises ``UnknownTask``, or ``LeaseConflict`` when the task is leased and unexpired,
    finished, paused, waiting out a retry backoff, or out of attempts.
    """
    fast = claim_queued(conn, task_id, lease_seconds=lease_seconds)
    if fast is not None:
        return fast
    token = uuid.uuid4()
    params = {"task_id": task_id, "lease_token": token, "lease_seconds": float(lease_seconds)}
    if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
        with conn.transaction():
            return _claim_locked(conn, task_id, token, params)
    return _claim_locked(conn, task_id, token, params)


def claim_queued(
    conn: Connection[Any], task_id: uuid.UUID, *, lease_seconds: float
) -> Lease | None:
    """``claim``'s common case alone, one statement: the lease when the task is queued, due,
    unpaused, with attempts left; else None (nothing changed)."""
    token = uuid.uuid4()
    params = {"task_id": task_id, "lease_token": token, "lease_seconds": float(lease_seconds)}
    with conn.cursor(row_factory=dict_row) as cur:
        fast = cur.execute(q("tasks", "claim_queued"), params).fetchone()
    return None if fast is None else Lease(task_id=task_id, lease_token=token, **fast)


def _claim_locked(
    conn: Connection[Any], task_id: uuid.UUID, token: uuid.UUID, params: dict[str, Any]
) -> Lease:
    """``claim`` decided on the locked row (caller is inside a transaction)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(q("tasks", "lock_task"), {"task_id": task_id}).fetchone()
        if row is None:
            raise UnknownTask(task_id)
        status = row["status"]
        if status in ("succeeded", "dead"):
            raise LeaseConflict(task_id, status)
        if row["paused"]:
            raise LeaseConflict(task_id, "paused")
        if status == "running" and not row["lease_expired"]:
            raise LeaseConflict(task_id, "leased")
        if status == "queued" and not row["due"]:
            raise LeaseConflict(task_id, "backoff")
        if row["attempt"] - row["attempt_base"] >= row["max_attempts"]:
            # an expired last attempt: nothing left to grant
            _mark_expired(conn, task_id, row["attempt"])
            conn.execute(
                q("tasks", "finish_dead"),
                {
                    "task_id": task_id,
                    "attempt": row["attempt"],
                    "error": "lease expired",
                    "kind": "expired",
                },
            )
            raise LeaseConflict(task_id, "attempts exhausted")
        if status == "running":
            _mark_expired(conn, task_id, row["attempt"])
        granted = cur.execute(q("tasks", "grant_lease"), params).fetchone()
        assert granted is not None
        cur.execute(
            q("tasks", "insert_attempt"), {"task_id": task_id, "attempt": granted["attempt"]}
        )
    return Lease(
        task_id=task_id,
        attempt=granted["attempt"],
        lease_token=token,
        lease_expires_at=granted["lease_expires_at"],
        operator=row["operator"],
        payload=row["payload"],
        max_attempts=row["max_attempts"],
        attempt_base=row["attempt_base"],
        org_id=row["org_id"],
    )


def _mark_expired(conn: Connection[Any], task_id: uuid.UUID, attempt: int) -> None:
    conn.execute(
        q("tasks", "record_attempt_outcome"),
        {"task_id": task_id, "attempt": attempt, "outcome": "expired", "error": "lease expired"},
    )


@translates_db_errors("task heartbeat")
def heartbeat(conn: Connection[Any], lease: Lease, *, lease_seconds: float) -> datetime:
    """Extend the lease of the current attempt. Raises ``StaleAttempt`` for any other attempt."""
    row = conn.execute(
        q("tasks", "heartbeat"),
        {
            "task_id": lease.task_id,
            "attempt": lease.attempt,
            "lease_token": lease.lease_token,
            "lease_seconds": float(lease_seconds),
        },
    ).fetchone()
    if row is None:
        raise StaleAttempt(lease.task_id, lease.attempt, "heartbeat rejected")
    expires: datetime = row[0]
    return expires


@translates_db_errors("task fence")
def fence(conn: Connection[Any], lease: Lease) -> None:
    """Lock the task row and require that ``lease`` is the current attempt's.

    Call first inside the transaction that commits an attempt's effects. Raises
    ``UnknownTask`` or ``StaleAttempt``; the caller's transaction must then roll back.
    """
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(q("tasks", "lock_task"), {"task_id": lease.task_id}).fetchone()
    check_fence(row, lease)


def check_fence(row: dict[str, Any] | None, lease: Lease) -> None:
    """``fence``'s check of the locked task row (``lock_task``, as a dict; None: no task)."""
    if row is None:
        raise UnknownTask(lease.task_id)
    if (
        row["status"] != "running"
        or row["attempt"] != lease.attempt
        or row["lease_token"] != lease.lease_token
    ):
        raise StaleAttempt(
            lease.task_id, lease.attempt, f"task is {row['status']} at attempt {row['attempt']}"
        )


@translates_db_errors("task finish_succeeded")
def finish_succeeded(
    conn: Connection[Any], lease: Lease, outputs: dict[str, Any] | None = None
) -> None:
    """Mark the fenced attempt succeeded (caller already called ``fence`` in this transaction)."""
    cur = conn.execute(
        q("tasks", "finish_succeeded"),
        {
            "task_id": lease.task_id,
            "attempt": lease.attempt,
            "lease_token": lease.lease_token,
            "outputs": Jsonb(outputs) if outputs is not None else None,
        },
    )
    if cur.rowcount != 1:
        raise StaleAttempt(lease.task_id, lease.attempt, "completion rejected")
    conn.execute(
        q("tasks", "record_attempt_outcome"),
        {"task_id": lease.task_id, "attempt": lease.attempt, "outcome": "succeeded", "error": None},
    )


@translates_db_errors("task complete_success")
def complete_success(
    conn: Connection[Any], lease: Lease, outputs: dict[str, Any] | None = None
) -> None:
    """Fence and complete in the caller's transaction (one statement when the lease is
    current), committed asynchronously unless the transaction writes an outbox row (module
    docstring); on an autocommit connection outside a transaction, that one statement is the
    whole transaction (one round trip; a completion with nothing else to commit, e.g. a no-op
    operator's). Raises ``UnknownTask``, or ``StaleAttempt`` if stale."""
    row = conn.execute(
        q("tasks", "complete_success"),
        {
            "task_id": lease.task_id,
            "attempt": lease.attempt,
            "lease_token": lease.lease_token,
            "outputs": Jsonb(outputs) if outputs is not None else None,
        },
    ).fetchone()
    if row is not None and row[0] == 1:
        return
    fence(conn, lease)  # raises, naming the task's state
    raise StaleAttempt(lease.task_id, lease.attempt, "completion rejected")


@translates_db_errors("task complete_failure")
def complete_failure(
    conn: Connection[Any],
    lease: Lease,
    *,
    error: str,
    fatal: bool,
    policy: RetryPolicy,
    kind: str | None = None,
) -> str:
    """Record a failed attempt; retry through the outbox with backoff, or end the task dead.

    Returns ``"retry"`` or ``"dead"``. Raises ``StaleAttempt`` if ``lease`` is not current.
    """
    fence(conn, lease)
    error = error[:2000]
    conn.execute(
        q("tasks", "record_attempt_outcome"),
        {
            "task_id": lease.task_id,
            "attempt": lease.attempt,
            "outcome": "fatal" if fatal else "retryable",
            "error": error,
        },
    )
    decision, delay = policy.decide(
        fatal=fatal, attempt=lease.budget_attempt, max_attempts=lease.max_attempts
    )
    kind = kind or ("fatal" if fatal else "retryable")
    if decision == "dead":
        conn.execute(
            q("tasks", "finish_dead"),
            {"task_id": lease.task_id, "attempt": lease.attempt, "error": error, "kind": kind},
        )
        log.warning("task dead", extra={"task_id": str(lease.task_id), "attempt": lease.attempt})
        return "dead"
    _requeue(conn, lease.task_id, lease.attempt, error=error, kind=kind, delay=delay)
    return "retry"


def _requeue(
    conn: Connection[Any], task_id: uuid.UUID, attempt: int, *, error: str, kind: str, delay: float
) -> None:
    row = conn.execute(
        q("tasks", "requeue"),
        {
            "task_id": task_id,
            "attempt": attempt,
            "error": error,
            "kind": kind,
            "delay": float(delay),
        },
    ).fetchone()
    assert row is not None
    gen = conn.execute(q("tasks", "bump_wakeups"), {"task_id": task_id}).fetchone()
    assert gen is not None
    enqueue_wakeup(conn, task_id=task_id, generation=gen[0], available_at=row[0])


@dataclass(frozen=True)
class ReapResult:
    retried: int = 0
    dead: int = 0
    rewoken: int = 0


@translates_db_errors("task reap")
def reap(
    conn: Connection[Any],
    *,
    policy: RetryPolicy,
    rewake_after_seconds: float,
    limit: int = 200,
) -> ReapResult:
    """Turn expired leases into retries (or final failures), and re-wake queued tasks that
    nobody claimed for ``rewake_after_seconds`` (a wake-up whose run never started)."""
    retried = dead = rewoken = 0
    expired = conn.execute(q("tasks", "expired_leases"), {"limit": limit}).fetchall()
    for task_id, attempt, attempt_base, max_attempts in expired:
        _mark_expired(conn, task_id, attempt)
        decision, _delay = policy.decide(
            fatal=False, attempt=attempt - attempt_base, max_attempts=max_attempts
        )
        if decision == "dead":
            conn.execute(
                q("tasks", "finish_dead"),
                {
                    "task_id": task_id,
                    "attempt": attempt,
                    "error": "lease expired",
                    "kind": "expired",
                },
            )
            dead += 1
        else:
            # no backoff: the attempt's worker died, the task did not fail; it runs again
            # within one lease of the crash (attempts still bound a task that kills workers)
            _requeue(conn, task_id, attempt, error="lease expired", kind="expired", delay=0.0)
            retried += 1
    stale = conn.execute(
        q("tasks", "unclaimed_queued"),
        {"after_seconds": float(rewake_after_seconds), "limit": limit},
    ).fetchall()
    for task_id, _attempt, _wakeups in stale:
        gen = conn.execute(q("tasks", "bump_wakeups"), {"task_id": task_id}).fetchone()
        assert gen is not None
        enqueue_wakeup(conn, task_id=task_id, generation=gen[0])
        rewoken += 1
    return ReapResult(retried=retried, dead=dead, rewoken=rewoken)


@translates_db_errors("task set_job_paused")
def set_job_paused(conn: Connection[Any], job_id: uuid.UUID, paused: bool) -> int:
    """Pause or resume a job's unfinished tasks; resuming re-wakes the queued ones.

    A running task keeps its lease when paused, but if it is requeued (retry) it stays
    paused and is not claimed until the job resumes.
    """
    rows = conn.execute(
        q("tasks", "set_paused_for_job"), {"job_id": job_id, "paused": paused}
    ).fetchall()
    if not paused:
        for task_id, status in rows:
            if status != "queued":
                continue
            gen = conn.execute(q("tasks", "bump_wakeups"), {"task_id": task_id}).fetchone()
            assert gen is not None
            enqueue_wakeup(conn, task_id=task_id, generation=gen[0])
    return len(rows)
