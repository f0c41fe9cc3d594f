"""``tenant_scope``: run a transaction as the tenant role, with one org set.

Row-level security (``state``/``data`` tenant tables, docs/tenancy.md) reads the org from the
``trace.org_id`` setting. Both the role and the org are set with transaction scope
(``SET LOCAL ROLE``, ``set_config(..., true)``), so they end with the transaction and hold
behind a transaction-mode pooler: a pooled connection never carries one org's scope into the
next client's transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg import Connection
from psycopg.pq import TransactionStatus

from trace_core.db.errors import db_errors

TENANT_ROLE = "trace_tenant"
SYSTEM_ROLE = "trace_system"
ORG_SETTING = "trace.org_id"


@contextmanager
def tenant_scope(
    conn: Connection[Any], org_id: uuid.UUID | str, *, as_tenant: bool = True
) -> Iterator[Connection[Any]]:
    """A transaction (or savepoint, inside one) in which row-level security shows ``org_id``'s
    rows only. ``as_tenant`` (default) also switches to ``trace_tenant`` for the transaction
    (``set_config('role', ..., true)`` is ``SET LOCAL ROLE``), so a superuser or owner
    connection is filtered too; False only sets the org (for a connection that already is a
    non-bypassing role).

    On an idle autocommit connection (a pooled request's) BEGIN and both settings go in one
    round trip; the block's own statements follow; COMMIT ends it (ROLLBACK on error).

    Raises ``DatabaseError`` when the role cannot be taken (migrations not applied)."""
    org = str(uuid.UUID(str(org_id)))  # a canonical uuid: safe as a literal below
    settings = f"set_config('{ORG_SETTING}', '{org}', true)"
    if as_tenant:
        settings = f"set_config('role', '{TENANT_ROLE}', true), {settings}"
    if not (conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE):
        with conn.transaction():
            with db_errors("tenant scope"):
                conn.execute(f"SELECT {settings}")
            yield conn
        return
    with db_errors("tenant scope"):
        conn.execute(f"BEGIN; SELECT {settings}")  # simple query: two statements, one trip
    try:
        yield conn
    except BaseException:
        if conn.info.transaction_status != TransactionStatus.UNKNOWN:
            with db_errors("tenant scope rollback"):
                conn.execute("ROLLBACK")
        raise
    with db_errors("tenant scope commit"):
        conn.execute("COMMIT")


def tenant_conninfo_options(org_id: uuid.UUID | str) -> str:
    """libpq ``options`` that open a whole session as the tenant role with ``org_id`` set: for
    a connection private to one request (DuckDB's Postgres scanner reading hot rows)."""
    org = str(uuid.UUID(str(org_id)))
    return f"-c role={TENANT_ROLE} -c {ORG_SETTING}={org}"
