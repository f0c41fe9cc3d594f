"""The query audit: one ``data.query_audit`` row per query that passed auth and grants.

Rows name who asked (user ``sub``, or task id + attempt), what was read (relation, dataset
and version ids), the SQL's sha256 (never its text), size, duration and outcome.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from psycopg import Connection
from psycopg.types.json import Jsonb

from trace_core.db.queries import q

Outcome = Literal["ok", "rejected", "failed"]


@dataclass(frozen=True)
class AuditRecord:
    query_id: uuid.UUID
    org_id: uuid.UUID
    sql_sha256: str
    duration_ms: int
    outcome: Outcome
    user_sub: str | None = None
    task_id: uuid.UUID | None = None
    attempt: int | None = None
    datasets: list[dict[str, str]] = field(default_factory=list)
    rows: int | None = None
    bytes: int | None = None
    error_code: str | None = None
    export_key: str | None = None


def write_audit(conn: Connection[Any], record: AuditRecord) -> None:
    """Insert the row in the caller's transaction (commit is the caller's)."""
    conn.execute(
        q("query", "insert_audit"),
        {
            "query_id": record.query_id,
            "org_id": record.org_id,
            "user_sub": record.user_sub,
            "task_id": record.task_id,
            "attempt": record.attempt,
            "datasets": Jsonb(record.datasets),
            "sql_sha256": record.sql_sha256,
            "rows": record.rows,
            "bytes": record.bytes,
            "duration_ms": max(0, record.duration_ms),
            "outcome": record.outcome,
            "error_code": record.error_code,
            "export_key": record.export_key,
        },
    )
