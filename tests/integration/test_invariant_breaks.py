"""Invariants that a plausible one-line break used to slip past (issue 26 item 10): each test
here fails when its invariant is broken that way. Real Postgres, the real pgqueue driver."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from tests.integration.test_revive import dead_task, snapshot
from trace_core import outbox
from trace_core.chain_sync.revive import SOURCE_CLI, SOURCE_RERUN, prepare_rerun, revive_tasks
from trace_core.db.connection import Databases, connect
from trace_core.errors import OutboxOnly, QueueError
from trace_core.queue.base import TASK_WAKEUP
from trace_core.queue.pgqueue import PgQueue
from trace_core.settings import Settings
from trace_core.tasks import claim, complete_success, create_task, heartbeat
from trace_core.tasks.keepalive import LeaseHeartbeat, lease_heartbeat


@pytest.fixture
def conn(dbs: Databases) -> Iterator[psycopg.Connection[Any]]:
    with connect(dbs.state_url, autocommit=True) as c:
        yield c


@pytest.fixture
def driver(dbs: Databases) -> Iterator[PgQueue]:
    d = PgQueue(dbs.state_url, max_receive_count=5, pool_size=2)
    yield d
    d.close()


def _task(conn: psycopg.Connection[Any], *, max_attempts: int = 3) -> uuid.UUID:
    task_id = uuid.uuid4()
    with conn.transaction():
        create_task(conn, task_id=task_id, operator="noop", payload={}, max_attempts=max_attempts)
    return task_id


def _lease_left(conn: psycopg.Connection[Any], task_id: uuid.UUID) -> timedelta:
    row = conn.execute(
        "SELECT lease_expires_at - now() FROM state.tasks WHERE task_id = %s", (task_id,)
    ).fetchone()
    assert row is not None and row[0] is not None
    left: timedelta = row[0]
    return left


# --- heartbeats extend the lease ---------------------------------------------------------


def test_a_heartbeat_moves_lease_expires_at_forward(
    conn: psycopg.Connection[Any], dbs: Databases, settings: Settings
) -> None:
    task_id = _task(conn)
    with conn.transaction():
        lease = claim(conn, task_id, lease_seconds=5)
    assert _lease_left(conn, task_id) <= timedelta(seconds=5)
    with conn.transaction():
        expires = heartbeat(conn, lease, lease_seconds=600)
    left = _lease_left(conn, task_id)
    assert timedelta(seconds=590) < left <= timedelta(seconds=600)  # the state row, not a reply
    assert expires > lease.lease_expires_at

    # the worker's own heartbeat thread (keepalive) extends it the same way
    beat = lease_heartbeat(
        settings.model_copy(update={"lease_seconds": 900}),
        lease,
        lambda: connect(dbs.state_url, autocommit=True),
    )
    beats = LeaseHeartbeat(beat, 0.01, lease)
    with beats.running():
        while _lease_left(conn, task_id) <= timedelta(seconds=600):
            beats.check()
    assert _lease_left(conn, task_id) > timedelta(seconds=890)


# --- the outbox marks sent only what the queue took ---------------------------------------


class RefusingQueue(PgQueue):
    """The real pgqueue driver, refusing the next ``refusals`` publishes with its own error."""

    def __init__(self, url: str, refusals: int) -> None:
        super().__init__(url, max_receive_count=5, pool_size=2)
        self.refusals = refusals

    def publish_batch(self, queue: str, payloads: Any, *, delay_seconds: float = 0) -> list[str]:
        if self.refusals > 0:
            self.refusals -= 1
            raise QueueError(f"queue {queue!r} refused the publish (throttled)")
        return super().publish_batch(queue, payloads, delay_seconds=delay_seconds)


def test_a_refused_publish_stays_pending_and_is_published_later(
    conn: psycopg.Connection[Any], dbs: Databases, driver: PgQueue
) -> None:
    ids = [_task(conn) for _ in range(3)]
    refusing = RefusingQueue(dbs.state_url, refusals=1)
    try:
        assert outbox.drain(conn, refusing) == 0
        assert refusing.refusals == 0  # the queue really refused
        rows = conn.execute(
            "SELECT status, attempts, last_error FROM state.outbox WHERE topic = %s", (TASK_WAKEUP,)
        ).fetchall()
        assert [r[0] for r in rows] == ["pending"] * 3  # nothing marked sent
        assert all(r[1] == 1 and "refused" in r[2] for r in rows)
        assert driver.receive(TASK_WAKEUP, 10, visibility_timeout=30) == []
        conn.execute("UPDATE state.outbox SET available_at = now()")  # skip the retry delay
        assert outbox.drain(conn, refusing) == 3
    finally:
        refusing.close()
    got = driver.receive(TASK_WAKEUP, 10, visibility_timeout=30)
    assert sorted(m.payload["task_id"] for m in got) == sorted(str(t) for t in ids)
    assert conn.execute("SELECT DISTINCT status FROM state.outbox").fetchall() == [("sent",)]


# --- only the outbox publishes wake-ups, whatever the call looks like ---------------------


def test_a_direct_wakeup_publish_is_refused_however_it_is_spelled(
    conn: psycopg.Connection[Any], driver: PgQueue
) -> None:
    payload = {"task_id": str(uuid.uuid4()), "wakeup": 1}
    send = driver.publish  # an alias of a bound method: no `.publish(` at the call site
    with pytest.raises(OutboxOnly):
        send(TASK_WAKEUP, payload)
    with pytest.raises(OutboxOnly):
        getattr(driver, "publish_batch")(TASK_WAKEUP, [payload])  # noqa: B009
    with pytest.raises(OutboxOnly):
        PgQueue.publish(driver, TASK_WAKEUP, payload)
    assert driver.stats(TASK_WAKEUP).depth == 0  # nothing got through
    driver.publish("other", {"n": 1})  # other topics are not wake-ups
    task_id = _task(conn)
    assert outbox.drain(conn, driver) == 1  # the outbox still publishes
    (msg,) = driver.receive(TASK_WAKEUP, 10, visibility_timeout=30)
    assert msg.payload["task_id"] == str(task_id)


# --- revive touches dead tasks only -------------------------------------------------------


def test_revive_changes_only_dead_tasks(conn: psycopg.Connection[Any]) -> None:
    queued = _task(conn)
    running = _task(conn)
    with conn.transaction():
        claim(conn, running, lease_seconds=300)
    succeeded = _task(conn)
    with conn.transaction():
        done = claim(conn, succeeded, lease_seconds=300)
    with conn.transaction():
        complete_success(conn, done, {"ok": True})
    dead = dead_task(conn)
    others = [queued, running, succeeded]

    def rows(ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
        """Every column of each task (updated_at included: any write shows)."""
        return {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT task_id, to_jsonb(t) FROM state.tasks t WHERE task_id = ANY(%s)", (ids,)
            )
        }

    before = rows(others)
    with conn.transaction():
        outcomes = revive_tasks(conn, [queued, running, succeeded, dead], source=SOURCE_CLI)
    assert {o.task_id: (o.status, o.revived) for o in outcomes} == {
        queued: ("queued", False),
        running: ("running", False),
        succeeded: ("succeeded", False),
        dead: ("dead", True),
    }
    assert rows(others) == before  # not a column of a live or finished task moved
    assert rows([dead])[dead]["status"] == "queued"
    revived = conn.execute("SELECT task_id FROM state.task_revivals").fetchall()
    assert revived == [(dead,)]

    # a re-executed run's preparation leaves them alone too
    snap = snapshot(conn)
    with conn.transaction():
        prep = prepare_rerun(conn, others, source=SOURCE_RERUN, detail="test", wake_delay_seconds=0)
    assert prep.revived == [] and rows(others) == before and snapshot(conn) == snap
