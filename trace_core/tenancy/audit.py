"""Security events (``state.audit_events``): refused credentials, refused or failed tenant
commands, key and membership changes. Details never carry a secret."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from psycopg import Connection

from trace_core.db.errors import db_errors
from trace_core.db.queries import q
from trace_core.tenancy.scope import SYSTEM_ROLE

Outcome = Literal["ok", "refused", "failed"]


@contextmanager
def system_scope(conn: Connection[Any]) -> Iterator[Connection[Any]]:
    """A transaction (or savepoint) run as ``trace_system``: cross-org work that must not
    depend on the connecting user bypassing row-level security (org lookup by name, key
    authentication's audit, creating an org)."""
    with conn.transaction():
        with db_errors("system scope"):
            conn.execute(f"SET LOCAL ROLE {SYSTEM_ROLE}")
        yield conn


def record_event(
    conn: Connection[Any],
    *,
    org_id: uuid.UUID | str | None,
    actor: str,
    action: str,
    outcome: Outcome,
    detail: str | None = None,
) -> None:
    """Append one audit row in its own transaction (committed even when the caller's work is
    refused and rolled back)."""
    params = {
        "org_id": str(org_id) if org_id is not None else None,
        "actor": actor,
        "action": action,
        "outcome": outcome,
        "detail": (detail or "")[:500] or None,
    }
    with system_scope(conn), db_errors("audit event"):
        conn.execute(q("tenancy", "insert_audit_event"), params)
