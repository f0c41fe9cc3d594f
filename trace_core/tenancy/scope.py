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

from trace_core.db.errors import db_errors

TENANT_ROLE = "trace_tenant"
SYSTEM_ROLE = "trace_system"
ORG_SETTING = "trace.org_id"


@contextmanager
def tenant_scope(
    conn: Connection[Any], org_id: uuid.UUID | str, *, as_tenant: bool = True
) -> Iterator[Connection[Any]]:
    """A transaction (or savepoint, inside one) in which row-level security shows ``org_id``'s
    rows only. ``as_tenant`` (default) also switches to ``trace_tenant`` for the transaction,
    so a superuser or owner connection is filtered too; False only sets the org (for a
    connection that already is a non-bypassing role).

    Raises ``DatabaseError`` when the role cannot be taken (migrations not applied)."""
    org = str(uuid.UUID(str(org_id)))
    with conn.transaction():
        with db_errors("tenant scope"):
            if as_tenant:
                conn.execute(f"SET LOCAL ROLE {TENANT_ROLE}")
            conn.execute("SELECT set_config(%s, %s, true)", (ORG_SETTING, org))
        yield conn


def tenant_conninfo_options(org_id: uuid.UUID | str) -> str:
    """libpq ``options`` that open a whole session as the tenant role with ``org_id`` set: for
    a connection private to one request (DuckDB's Postgres scanner reading hot rows)."""
    org = str(uuid.UUID(str(org_id)))
    return f"-c role={TENANT_ROLE} -c {ORG_SETTING}={org}"
