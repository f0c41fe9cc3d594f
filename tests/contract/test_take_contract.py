"""``tasks.take`` on both drivers: pgqueue (one statement) and SQS on moto's server (separate
calls) settle, leave pending and claim the same wake-ups, against a real state database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import Connection

from tests.contract.test_queue_contract import Harness, open_harness
from trace_core import outbox
from trace_core.db.connection import connect
from trace_core.errors import DatabaseError, LeaseConflict
from trace_core.queue.base import TASK_WAKEUP, Message, QueueDriver, outbox_publishing
from trace_core.tasks.lifecycle import claim, complete_success, create_task
from trace_core.tasks.take import take

LEASE = 30.0
VIS = 60.0


@pytest.fixture(params=["pgqueue", "sqs"])
def th(request: pytest.FixtureRequest, queue_state_url: str) -> Iterator[tuple[Harness, Any]]:
    with (
        open_harness(request.param, request, max_receive_count=5) as h,
        connect(queue_state_url, autocommit=True) as conn,
    ):
        conn.execute("TRUNCATE state.tasks, state.task_attempts, state.outbox CASCADE")
        yield h, conn


def _task(conn: Connection[Any], h: Harness, *, paused: bool = False) -> uuid.UUID:
    """A new task, its wake-up published through the outbox."""
    task_id = uuid.uuid4()
    with conn.transaction():
        create_task(conn, task_id=task_id, operator="noop", payload={"n": 1}, paused=paused)
    outbox.drain_all(conn, h.driver)
    return task_id


def _wake(driver: QueueDriver, payload: dict[str, Any]) -> None:
    with outbox_publishing():
        driver.publish(TASK_WAKEUP, payload)


def _state(conn: Connection[Any], task_id: uuid.UUID) -> tuple[str, int, int]:
    row = conn.execute(
        "SELECT t.status, t.attempt, (SELECT count(*) FROM state.task_attempts a"
        " WHERE a.task_id = t.task_id) FROM state.tasks t WHERE t.task_id = %s",
        (task_id,),
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def _take(conn: Connection[Any], h: Harness, n: int = 10, **kw: Any) -> Any:
    h.settle()
    return take(conn, h.driver, TASK_WAKEUP, n, lease_seconds=LEASE, visibility_timeout=VIS, **kw)


def test_take_claims_queued_settles_spent_and_leaves_the_rest_pending(
    th: tuple[Harness, Connection[Any]],
) -> None:
    h, conn = th
    queued = _task(conn, h)
    done = _task(conn, h)
    complete_success(conn, claim(conn, done, lease_seconds=LEASE))
    running = _task(conn, h)
    held = claim(conn, running, lease_seconds=LEASE)
    paused = _task(conn, h, paused=True)
    _wake(h.driver, {"task_id": str(paused), "wakeup": 2})  # a paused task's wake-up (a resume's)
    _wake(h.driver, {"task_id": str(uuid.uuid4()), "wakeup": 1})  # no such task
    _wake(h.driver, {"wakeup": 1})  # malformed
    skipped = _task(conn, h)

    got = _take(conn, h, skip={skipped})
    assert got.received == 7 and got.stale == []
    assert [(lease.task_id, lease.attempt) for lease in got.leases] == [(queued, 1)]
    assert got.leases[0].operator == "noop" and got.leases[0].payload == {"n": 1}
    pending = sorted(str(m.payload["task_id"]) for m in got.pending)
    assert pending == sorted(str(t) for t in (running, paused, skipped))
    assert _state(conn, queued) == ("running", 1, 1)
    assert _state(conn, skipped) == ("queued", 0, 0)
    # the claim is real: nobody else gets the task; the running one keeps its lease
    with pytest.raises(LeaseConflict):
        claim(conn, queued, lease_seconds=LEASE)
    assert _state(conn, running) == ("running", held.attempt, 1)
    complete_success(conn, got.leases[0])

    # the pending wake-ups are the caller's: acking them with the next take empties the queue
    again = _take(conn, h, done=got.pending)
    assert again.stale == [] and again.leases == [] and again.received == 0
    assert h.driver.stats(TASK_WAKEUP).in_flight == 0
    assert h.driver.stats(TASK_WAKEUP).depth == 0


def test_take_reports_stale_done_and_leaves_them_untouched(
    th: tuple[Harness, Connection[Any]],
) -> None:
    h, conn = th
    task_id = _task(conn, h)
    first = h.driver.receive(TASK_WAKEUP, 1, visibility_timeout=VIS)[0]
    h.expire(first)
    h.settle()
    again = h.driver.receive(TASK_WAKEUP, 1, visibility_timeout=VIS)[0]  # ``first`` is stale
    got = _take(conn, h, done=[first, Message(TASK_WAKEUP, "x", "y", {}, 1)])
    assert len(got.stale) == 2 and got.received == 0 and got.leases == []
    assert h.driver.stats(TASK_WAKEUP).in_flight == 1  # the redelivered copy, untouched
    got = _take(conn, h, done=[again])
    assert got.stale == [] and h.driver.stats(TASK_WAKEUP).in_flight == 0
    assert _state(conn, task_id) == ("queued", 0, 0)


def _only_task(conn: Connection[Any], driver: QueueDriver) -> uuid.UUID:
    """Empty tasks and queue, then one new task, its wake-up published (pgqueue's tests)."""
    conn.execute("TRUNCATE state.tasks, state.task_attempts, state.outbox CASCADE")
    conn.execute("TRUNCATE state.queue_messages, state.queue_dead")
    task_id = uuid.uuid4()
    with conn.transaction():
        create_task(conn, task_id=task_id, operator="noop", payload={})
    outbox.drain_all(conn, driver)
    return task_id


def test_failed_take_claims_nothing_and_settles_nothing(queue_state_url: str) -> None:
    """pgqueue's take is one transaction: a statement that fails after its claim leaves the
    task queued and its wake-up due (here the lease's interval is out of range)."""
    from trace_core.queue.pgqueue import PgQueue

    driver = PgQueue(queue_state_url, max_receive_count=5, pool_size=1)
    with connect(queue_state_url, autocommit=True) as conn:
        task_id = _only_task(conn, driver)
        with pytest.raises((DatabaseError, psycopg.Error)):
            take(conn, driver, TASK_WAKEUP, 1, lease_seconds=1e300, visibility_timeout=VIS)
        assert _state(conn, task_id) == ("queued", 0, 0)
        assert driver.stats(TASK_WAKEUP).depth == 1
        got = take(conn, driver, TASK_WAKEUP, 1, lease_seconds=LEASE, visibility_timeout=VIS)
        assert [lease.task_id for lease in got.leases] == [task_id]
    driver.close()


def test_a_take_that_claims_commits_durably(queue_state_url: str) -> None:
    """On a connection committing asynchronously (as pgqueue's do), a take that claims turns
    ``synchronous_commit`` on for its own commit; one that only receives leaves it off."""
    from trace_core.queue.pgqueue import PgQueue

    driver = PgQueue(queue_state_url, max_receive_count=5, pool_size=1)
    with connect(queue_state_url, autocommit=True, options="-c synchronous_commit=off") as conn:
        task_id = _only_task(conn, driver)
        _wake(driver, {"task_id": str(task_id), "wakeup": 2})  # a second wake-up
        with conn.transaction():
            got = take(conn, driver, TASK_WAKEUP, 1, lease_seconds=LEASE, visibility_timeout=VIS)
            assert [lease.task_id for lease in got.leases] == [task_id]
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        with conn.transaction():  # the second wake-up finds its task running: received only
            got = take(conn, driver, TASK_WAKEUP, 1, lease_seconds=LEASE, visibility_timeout=VIS)
            assert got.leases == [] and len(got.pending) == 1
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
    driver.close()
