"""``tenant_scope``: run a transaction as the tenant role, with one org set.

Row-level security (``state``/``data`` tenant tables, docs/tenancy.md) reads the org from the
``trace.org_id`` setting. Both the role and the org are set with transaction scope
(``SET LOCAL ROLE``, ``set_config(..., true)``), so they end with the transaction and hold
behind a transaction-mode pooler: a pooled connection never carries one org's scope into the
next client's transaction.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg import Connection

from trace_core.db.errors import db_errors

TENANT_ROLE = "trace_tenant"
SYSTEM_ROLE = "trace_system"
ORG_SETTING = "trace.org_id"


_SET_BOTH = "SELECT set_config('role', %s, true), set_config('trace.org_id', %s, true)"
_SET_ORG = "SELECT set_config('trace.org_id', %s, true)"


@contextmanager
def tenant_scope(
    conn: Connection[Any],
    org_id: uuid.UUID | str,
    *,
    as_tenant: bool = True,
    pipeline: bool = False,
) -> Iterator[Connection[Any]]:
    """A transaction (or savepoint, inside one) in which row-level security shows ``org_id``'s
    rows only. ``as_tenant`` (default) also switches to ``trace_tenant`` for the transaction
    (``set_config('role', ..., true)`` is ``SET LOCAL ROLE``), so a superuser or owner
    connection is filtered too; False only sets the org (for a connection that already is a
    non-bypassing role).

    ``pipeline``: run the block in psycopg's pipeline mode, so BEGIN and the settings travel
    with the block's first query (one round trip instead of three: what a hot path such as a
    Query Service request wants). Then only read results by fetching (``rowcount`` is not
    reliable before a fetch) and do no COPY.

    Raises ``DatabaseError`` when the role cannot be taken (migrations not applied)."""
    org = str(uuid.UUID(str(org_id)))
    stmt, params = (_SET_BOTH, (TENANT_ROLE, org)) if as_tenant else (_SET_ORG, (org,))
    with contextlib.ExitStack() as stack:
        if pipeline:
            stack.enter_context(conn.pipeline())
        stack.enter_context(conn.transaction())
        with db_errors("tenant scope"):
            conn.execute(stmt, params)
        yield conn


def tenant_conninfo_options(org_id: uuid.UUID | str) -> str:
    """libpq ``options`` that open a whole session as the tenant role with ``org_id`` set: for
    a connection private to one request (DuckDB's Postgres scanner reading hot rows)."""
    org = str(uuid.UUID(str(org_id)))
    return f"-c role={TENANT_ROLE} -c {ORG_SETTING}={org}"
