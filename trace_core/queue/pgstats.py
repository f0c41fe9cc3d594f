"""pgqueue's statistics read on a given connection: ``PgQueue.stats`` uses it on its pool,
``trace-lite status`` on the connection it already holds (without importing the pool)."""

from __future__ import annotations

from typing import Any

from psycopg import Connection

from trace_core.db.queries import q
from trace_core.queue.base import QueueStats


def queue_stats(conn: Connection[Any], queue: str) -> QueueStats:
    """Depth, in-flight, oldest visible message's age and dead letters of ``queue``."""
    row = conn.execute(q("pgqueue", "stats"), {"queue": queue}).fetchone()
    assert row is not None
    depth, in_flight, oldest, dead = row
    return QueueStats(
        depth=int(depth),
        in_flight=int(in_flight),
        oldest_age_seconds=None if oldest is None else max(0.0, float(oldest)),
        dead=int(dead),
    )
