"""A worker's take: ack the wake-ups it finished, receive the next ones and claim their tasks.

On pgqueue (whose table lives in the state database) a take is one statement on the caller's
state connection (``take.sql``; best one with pgqueue's planner options,
``Runtime.reused_state(queue=True)``, as a worker run's takes have): the acks, the receive and the claims commit together, durably
when anything was claimed (a claim a crash forgot could hand one attempt number to two
workers: docs/reliability.md). On any other driver (SQS) the same take is several calls:
``ack_receive``, the tasks' states, one claim statement per queued task, then the ack of the
settled wake-ups (after the claims: a crash in between only redelivers them).

Either way a wake-up ends in one of two places. Settled (acked): its task was claimed by this
take, is finished or unknown, or the payload names no task. Pending (received, hidden for the
visibility timeout): its task exists but is not claimable as queued (running, in backoff,
paused, out of attempts, or in ``skip``); the caller decides with ``lifecycle.claim`` and acks
it, as it did before takes existed. Wake-ups at their receive limit are left to ``receive``,
which dead-letters them (pgqueue; SQS redrives them itself).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import Connection

from trace_core.db.errors import translates_db_errors
from trace_core.db.queries import q
from trace_core.queue.base import Message, QueueDriver
from trace_core.queue.pgqueue import PgQueue, message_keys
from trace_core.tasks.lifecycle import Lease, claim_queued

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Taken:
    """What a take did: the leases it granted (their wake-ups acked), the wake-ups left
    pending for the caller, the stale ones of ``done`` (untouched) and how many it received."""

    leases: list[Lease] = field(default_factory=list)
    pending: list[Message] = field(default_factory=list)
    stale: list[Message] = field(default_factory=list)
    received: int = 0


def task_id_of(message: Message) -> uuid.UUID | None:
    """The task a wake-up names, or None when its payload is malformed."""
    try:
        return uuid.UUID(str(message.payload["task_id"]))
    except (KeyError, ValueError, TypeError):
        return None


@translates_db_errors("task take")
def take(
    conn: Connection[Any],
    queue: QueueDriver,
    queue_name: str,
    max_tasks: int,
    *,
    lease_seconds: float,
    visibility_timeout: float,
    done: Sequence[Message] = (),
    skip: Collection[uuid.UUID] = (),
) -> Taken:
    """Ack ``done``, receive up to ``max_tasks`` wake-ups of ``queue_name`` (no wait) and
    claim the queued, due tasks they name (not those in ``skip``) for ``lease_seconds``.

    ``conn`` is an autocommit state connection outside a transaction. Raises what the driver
    raises (``QueueError``) or ``DatabaseError``.
    """
    if max_tasks < 1 or visibility_timeout < 0:
        raise ValueError("max_tasks must be >= 1 and visibility_timeout >= 0")
    if isinstance(queue, PgQueue):
        return _take_pg(
            conn, queue, queue_name, max_tasks, lease_seconds, visibility_timeout, done, skip
        )
    return _take_calls(
        conn, queue, queue_name, max_tasks, lease_seconds, visibility_timeout, done, skip
    )


def _take_pg(
    conn: Connection[Any],
    queue: PgQueue,
    queue_name: str,
    limit: int,
    lease_seconds: float,
    visibility: float,
    done: Sequence[Message],
    skip: Collection[uuid.UUID],
) -> Taken:
    keyed, stale = message_keys(done)
    rows = conn.execute(
        q("take", "take"),
        {
            "message_ids": [k[0] for _, k in keyed],
            "receipts": [k[1] for _, k in keyed],
            "queue": queue_name,
            "limit": limit,
            "max_receive_count": queue.max_receive_count,
            "lease_seconds": float(lease_seconds),
            "skip": list(skip),
            "visibility": float(visibility),
        },
    ).fetchall()
    acked: set[tuple[int, uuid.UUID]] = set()
    taken = Taken(stale=stale)
    settled = 0
    for kind, message_id, receipt, payload, count, *lease in rows:
        if kind == "acked":
            acked.add((message_id, receipt))
        elif kind == "settled":
            settled += 1
        elif kind == "received":
            taken.pending.append(Message(queue_name, str(message_id), str(receipt), payload, count))
        else:
            task_id, attempt, token, expires, operator, max_attempts, base, org_id = lease
            taken.leases.append(
                Lease(
                    task_id=task_id,
                    attempt=attempt,
                    lease_token=token,
                    lease_expires_at=expires,
                    operator=operator,
                    payload=payload,
                    max_attempts=max_attempts,
                    attempt_base=base,
                    org_id=org_id,
                )
            )
    stale += [m for m, k in keyed if k not in acked]
    if stale:
        log.info("take skipped stale receipts", extra={"count": len(stale)})
    return Taken(taken.leases, taken.pending, stale, settled + len(taken.pending))


def _take_calls(
    conn: Connection[Any],
    queue: QueueDriver,
    queue_name: str,
    limit: int,
    lease_seconds: float,
    visibility: float,
    done: Sequence[Message],
    skip: Collection[uuid.UUID],
) -> Taken:
    stale, received = queue.ack_receive(done, queue_name, limit, visibility_timeout=visibility)
    named = {m.message_id: task_id_of(m) for m in received}
    ids = list({t for t in named.values() if t is not None})
    states = (
        {r[0]: r[1] for r in conn.execute(q("tasks", "task_states"), {"task_ids": ids})}
        if ids
        else {}
    )
    leases: dict[uuid.UUID, Lease] = {}
    for task_id in ids:
        if states.get(task_id) == "queued" and task_id not in skip:
            lease = claim_queued(conn, task_id, lease_seconds=lease_seconds)
            if lease is not None:
                leases[task_id] = lease
    settle, pending = [], []
    for m in received:
        named_id = named[m.message_id]
        state = states.get(named_id) if named_id is not None else None
        if state is None or state in ("succeeded", "dead") or named_id in leases:
            settle.append(m)
        else:
            pending.append(m)
    if settle:
        queue.ack_batch(settle)  # stale only if redelivered meanwhile: the claim decides then
    return Taken(list(leases.values()), pending, stale, len(received))
