"""Dead letters of alert delivery: ``failed`` deliveries, listed, replayed or dismissed.

A delivery fails for good on a permanent error (4xx, SMTP 5xx, an SNS InvalidParameter, a
missing secret) or when its channel's attempts are exhausted. ``trace-lite dlq ... --queue
alert_deliveries`` manages them like the queues' dead letters: replay sends one again (same
delivery id, so the same idempotency/dedupe key, with a fresh budget of attempts); purge
dismisses it (the row and its attempt history stay, for the record).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

from trace_core.db.queries import q

ALERT_DLQ = "alert_deliveries"


def _ids(ids: Sequence[uuid.UUID] | None) -> list[uuid.UUID] | None:
    return None if ids is None else list(ids)


def list_dead(
    conn: Connection[Any], *, ids: Sequence[uuid.UUID] | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Failed, undismissed deliveries (all, or those of ``ids``), oldest failure first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            q("alerts", "dead_deliveries"), {"ids": _ids(ids), "limit": limit}
        ).fetchall()


def replay_dead(
    conn: Connection[Any], *, more_attempts: int, ids: Sequence[uuid.UUID] | None = None
) -> int:
    """Make dead deliveries due now with ``more_attempts`` further attempts; returns how many."""
    with conn.transaction():
        cur = conn.execute(
            q("alerts", "replay_dead_deliveries"),
            {"ids": _ids(ids), "more_attempts": more_attempts},
        )
    return cur.rowcount


def dismiss_dead(conn: Connection[Any], *, ids: Sequence[uuid.UUID] | None = None) -> int:
    """Mark dead deliveries dismissed (kept, no longer listed); returns how many."""
    with conn.transaction():
        cur = conn.execute(q("alerts", "dismiss_dead_deliveries"), {"ids": _ids(ids)})
    return cur.rowcount


def attempts_of(conn: Connection[Any], delivery: uuid.UUID) -> list[dict[str, Any]]:
    """The delivery's history: one row per attempt, oldest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(q("alerts", "delivery_attempts"), {"delivery_id": delivery}).fetchall()
