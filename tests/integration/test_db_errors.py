"""Driver errors become Trace errors at the lifecycle, planner and commit boundaries, with the
driver's exception kept as the cause."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import Connection

from trace_core.chain_sync import range_outcomes
from trace_core.db.connection import Databases, connect
from trace_core.db.errors import translate
from trace_core.errors import DatabaseError, DatabaseUnreachable, RetryableError
from trace_core.tasks import lifecycle
from trace_core.tasks.lifecycle import Lease


@pytest.fixture
def conn(dbs: Databases) -> Iterator[Connection[Any]]:
    with connect(dbs.state_url, autocommit=True) as c:
        yield c


def _lease() -> Lease:
    return Lease(uuid.uuid4(), 1, uuid.uuid4(), datetime.now(UTC), "noop", {})


def test_translate_maps_sqlstates() -> None:
    cases = [
        (psycopg.errors.SerializationFailure("retry me"), DatabaseError, "40001"),
        (psycopg.errors.UniqueViolation("dup"), DatabaseError, "23505"),
        (psycopg.errors.AdminShutdown("bye"), DatabaseUnreachable, "57P01"),
        (psycopg.OperationalError("connection refused"), DatabaseUnreachable, None),
    ]
    for exc, kind, state in cases:
        got = translate(exc, "task claim")
        assert type(got) is kind and isinstance(got, RetryableError)
        assert got.fields.get("sqlstate") == state
        assert str(got).startswith(f"task claim: {type(exc).__name__}")


def test_a_failed_transaction_is_a_database_error_with_its_cause(conn: Connection[Any]) -> None:
    with pytest.raises(DatabaseError) as info, conn.transaction():
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM no_such_table")
        lifecycle.fence(conn, _lease())  # the transaction is aborted: 25P02
    assert info.value.fields["sqlstate"] == "25P02"
    assert isinstance(info.value.__cause__, psycopg.errors.InFailedSqlTransaction)
    assert str(info.value).startswith("task fence: InFailedSqlTransaction")


def test_a_closed_connection_is_unreachable(dbs: Databases) -> None:
    c = connect(dbs.state_url, autocommit=True)
    c.close()
    with pytest.raises(DatabaseUnreachable) as info:
        range_outcomes.range_for_task(c, uuid.uuid4())
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    with pytest.raises(DatabaseUnreachable):
        lifecycle.claim(c, uuid.uuid4(), lease_seconds=30)
