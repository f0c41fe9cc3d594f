"""The system acting for one org: which org a system session's new rows are stamped with.

System connections (``trace_system``) bypass row-level security and see every org; a new
tenant row takes its parent's org (state migration 0032's triggers), else the session's
``trace.org_id``. Cross-org code (the dispatcher tick, routing, a worker run's takes) sets
that org per org's step here, so what it writes for an org (outbox rows, head observations,
capabilities) is that org's.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from psycopg import Connection
from psycopg.pq import TransactionStatus

from trace_core.db.errors import db_errors
from trace_core.db.queries import q


@dataclass(frozen=True)
class OrgRef:
    org_id: uuid.UUID
    name: str


def orgs_with_work(conn: Connection[Any], *, enabled_only: bool = True) -> list[OrgRef]:
    """Orgs with (enabled) chain_sync jobs, transforms or alerts, by name."""
    with db_errors("orgs with work"):
        rows = conn.execute(q("orgs", "orgs_with_work"), {"enabled_only": enabled_only})
        return [OrgRef(org_id, name) for org_id, name in rows.fetchall()]


@contextlib.contextmanager
def acting_for(
    conn: Connection[Any], org_id: str | uuid.UUID, home: str | uuid.UUID
) -> Iterator[None]:
    """Stamp the session's new rows with ``org_id`` inside the block, ``home`` (the runtime's
    org) again after it. ``conn`` is a system connection, outside a transaction."""
    _set_org(conn, org_id, is_local=False)
    try:
        yield
    finally:
        if conn.info.transaction_status == TransactionStatus.IDLE:
            _set_org(conn, home, is_local=False)


def act_in_transaction(conn: Connection[Any], org_id: str | uuid.UUID) -> None:
    """Stamp the new rows of the caller's open transaction with ``org_id`` (until it ends)."""
    _set_org(conn, org_id, is_local=True)


def dataset_org(conn: Connection[Any], dataset_uuid: str | uuid.UUID) -> uuid.UUID | None:
    """The org owning a dataset (None if there is no such dataset)."""
    with db_errors("dataset org"):
        row = conn.execute(q("orgs", "dataset_org"), {"dataset_uuid": dataset_uuid}).fetchone()
    return row[0] if row else None


def _set_org(conn: Connection[Any], org_id: str | uuid.UUID, *, is_local: bool) -> None:
    with db_errors("act for org"):
        conn.execute(q("orgs", "act_for_org"), {"org_id": str(org_id), "is_local": is_local})
