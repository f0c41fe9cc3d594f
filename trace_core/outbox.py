"""The outbox: the only path by which work wake-ups reach a queue.

Producers write an outbox row in the same transaction as their durable intent
(``enqueue``/``enqueue_wakeup``). ``drain`` publishes due rows through the QueueDriver and then
marks them sent; a crash between the two re-publishes (a duplicate wake-up, never a lost one).
Several publishers may drain at once: rows are claimed with ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg import Connection
from psycopg.types.json import Jsonb

from trace_core.db.queries import q
from trace_core.errors import TraceError
from trace_core.queue.base import TASK_WAKEUP, QueueDriver, outbox_publishing

log = logging.getLogger(__name__)

OUTBOX_NAMESPACE = uuid.UUID("6c073087-5b7c-4c55-b07a-1e2c7a015ae2")


def outbox_id(name: str) -> uuid.UUID:
    """Deterministic outbox id: repeating the same intent collapses to one row."""
    return uuid.uuid5(OUTBOX_NAMESPACE, name)


def enqueue(
    conn: Connection[Any],
    *,
    topic: str,
    payload: dict[str, Any],
    dedupe_name: str,
    available_at: datetime | None = None,
) -> None:
    """Write an outbox row in the caller's transaction (idempotent by ``dedupe_name``)."""
    conn.execute(
        q("outbox", "insert_outbox"),
        {
            "outbox_id": outbox_id(dedupe_name),
            "topic": topic,
            "payload": Jsonb(payload),
            "available_at": available_at,
        },
    )


def enqueue_wakeup(
    conn: Connection[Any],
    *,
    task_id: uuid.UUID,
    generation: int,
    available_at: datetime | None = None,
) -> None:
    """A task wake-up; ``generation`` counts wake-ups of the task so each is distinct."""
    enqueue(
        conn,
        topic=TASK_WAKEUP,
        payload={"task_id": str(task_id), "wakeup": generation},
        dedupe_name=f"task_wakeup:{task_id}:{generation}",
        available_at=available_at,
    )


def enqueue_wakeups(conn: Connection[Any], wakeups: Sequence[tuple[uuid.UUID, int]]) -> None:
    """``enqueue_wakeup`` for many ``(task_id, generation)`` pairs, due now, in one statement."""
    if not wakeups:
        return
    conn.execute(
        q("outbox", "insert_outbox_batch"),
        {
            "topic": TASK_WAKEUP,
            "outbox_ids": [outbox_id(f"task_wakeup:{t}:{g}") for t, g in wakeups],
            "payloads": [Jsonb({"task_id": str(t), "wakeup": g}) for t, g in wakeups],
        },
    )


def drain(conn: Connection[Any], driver: QueueDriver, *, batch_size: int = 500) -> int:
    """Publish one batch of due outbox rows; returns how many were published.

    Runs its own transaction on ``conn`` (which must not be inside another one).
    """
    with conn.transaction():
        rows = conn.execute(q("outbox", "claim_pending"), {"limit": batch_size}).fetchall()
        if not rows:
            return 0
        by_topic: dict[str, list[tuple[uuid.UUID, dict[str, Any]]]] = defaultdict(list)
        for oid, topic, payload in rows:
            by_topic[topic].append((oid, payload))
        published: list[uuid.UUID] = []
        for topic, items in by_topic.items():
            try:
                with outbox_publishing():  # the drivers refuse wake-ups published any other way
                    driver.publish_batch(topic, [p for _, p in items])
            except TraceError as exc:
                log.warning("outbox publish failed", extra={"topic": topic, "error": str(exc)})
                conn.execute(
                    q("outbox", "mark_error"),
                    {"ids": [oid for oid, _ in items], "error": str(exc)[:1000], "delay": 1.0},
                )
                continue
            published.extend(oid for oid, _ in items)
        if published:
            conn.execute(q("outbox", "mark_sent"), {"ids": published})
    return len(published)


def drain_all(
    conn: Connection[Any], driver: QueueDriver, *, batch_size: int = 500, max_batches: int = 20
) -> int:
    """Drain until no due rows remain (bounded, so a sensor tick stays small)."""
    total = 0
    for _ in range(max_batches):
        n = drain(conn, driver, batch_size=batch_size)
        total += n
        if n < batch_size:
            break
    return total


def pending_counts(conn: Connection[Any]) -> tuple[int, int]:
    """(due, total) pending outbox rows."""
    row = conn.execute(q("outbox", "pending_count")).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])
