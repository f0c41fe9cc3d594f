"""The query audit: one ``data.query_audit`` row per query that passed auth and grants.

Rows name who asked (user ``sub``, or task id + attempt), what was read (relation, dataset
and version ids), the SQL's sha256 (never its text), size, duration and outcome.

A durable audit of an executed query is written in two steps (``write_started`` while the
engine runs, with a durable commit; ``write_finished`` with the outcome after it) so the
query does not wait for a WAL flush of its own; see ``QueryService._run``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from psycopg import Connection
from psycopg.types.json import Jsonb

from trace_core.db.queries import q
from trace_core.errors import StorageError

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


def _params(record: AuditRecord) -> dict[str, Any]:
    return {
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
    }


def write_audit(conn: Connection[Any], record: AuditRecord) -> None:
    """Insert the row in the caller's transaction (commit is the caller's)."""
    conn.execute(q("query", "insert_audit"), _params(record))


def write_started(conn: Connection[Any], record: AuditRecord) -> None:
    """Insert ``record``'s row as 'started' (who, what it reads, the SQL's sha256)."""
    conn.execute(q("query", "insert_audit_started"), _params(record))


def write_finished(conn: Connection[Any], record: AuditRecord) -> None:
    """Record the outcome of a query whose 'started' row exists. Raises ``StorageError``
    when there is no such row (nothing may answer without its audit row)."""
    cur = conn.execute(q("query", "finish_audit"), _params(record))
    if cur.rowcount != 1:
        raise StorageError(f"query {record.query_id} has no started audit row")
