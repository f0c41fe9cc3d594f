"""Task lifecycle end to end on real Postgres: tasks + outbox + pgqueue.

Racing duplicate wake-ups, a SIGKILLed worker process, stale attempts, retries with backoff,
fatal and exhausted failures, and what claim refuses. Lease times come from the database.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from psycopg import Connection, Rollback

from trace_core import outbox
from trace_core.db.connection import Databases, connect
from trace_core.errors import LeaseConflict, StaleAttempt
from trace_core.queue.base import TASK_WAKEUP, Message, outbox_publishing
from trace_core.queue.pgqueue import PgQueue
from trace_core.tasks import (
    Lease,
    NewTask,
    RetryPolicy,
    claim,
    complete_failure,
    complete_success,
    create_task,
    create_tasks,
    heartbeat,
    reap,
)

NO_BACKOFF = RetryPolicy(base_seconds=0)


@pytest.fixture
def driver(dbs: Databases) -> Iterator[PgQueue]:
    d = PgQueue(dbs.state_url, max_receive_count=50, pool_size=4)
    yield d
    d.close()


@pytest.fixture
def conn(dbs: Databases) -> Iterator[Connection[Any]]:
    with connect(dbs.state_url, autocommit=True) as c:
        yield c


def _new_task(conn: Connection[Any], *, max_attempts: int = 3, paused: bool = False) -> uuid.UUID:
    task_id = uuid.uuid4()
    with conn.transaction():
        create_task(
            conn,
            task_id=task_id,
            operator="noop",
            payload={"n": 1},
            max_attempts=max_attempts,
            paused=paused,
        )
    return task_id


def _claim(conn: Connection[Any], task_id: uuid.UUID, lease_seconds: float = 30) -> Lease:
    with conn.transaction():
        return claim(conn, task_id, lease_seconds=lease_seconds)


def _task(conn: Connection[Any], task_id: uuid.UUID) -> tuple[Any, ...]:
    row = conn.execute("SELECT * FROM state.tasks WHERE task_id = %s", (task_id,)).fetchone()
    assert row is not None
    return tuple(row)


def _snapshot(conn: Connection[Any], task_id: uuid.UUID) -> tuple[Any, ...]:
    """Everything a completion could touch: the task row, its attempts, the outbox."""
    attempts = conn.execute(
        "SELECT * FROM state.task_attempts WHERE task_id = %s ORDER BY attempt", (task_id,)
    ).fetchall()
    out = conn.execute("SELECT * FROM state.outbox ORDER BY outbox_id").fetchall()
    return _task(conn, task_id), attempts, out


def _status(conn: Connection[Any], task_id: uuid.UUID) -> tuple[str, int]:
    row = conn.execute(
        "SELECT status, attempt FROM state.tasks WHERE task_id = %s", (task_id,)
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def _outcomes(conn: Connection[Any], task_id: uuid.UUID) -> list[tuple[int, str | None]]:
    rows = conn.execute(
        "SELECT attempt, outcome FROM state.task_attempts WHERE task_id = %s ORDER BY attempt",
        (task_id,),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def _poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_twenty_workers_race_on_duplicate_wakeups(
    dbs: Databases, conn: Connection[Any], driver: PgQueue
) -> None:
    """One lease at a time, the body runs once per attempt, one success at the end.

    Attempts 1 and 2 fail retryably (requeued through the outbox), attempt 3 succeeds; 20
    duplicate wake-ups plus the retries' wake-ups are raced by 20 workers.
    """
    task_id = _new_task(conn, max_attempts=3)
    assert outbox.drain_all(conn, driver) == 1
    with outbox_publishing():  # as redeliveries of the outbox's publish
        driver.publish_batch(TASK_WAKEUP, [{"task_id": str(task_id), "wakeup": 1}] * 19)

    lock = threading.Lock()
    holders: list[int] = []  # attempts currently running the body
    max_holders = 0
    bodies: list[int] = []
    conflicts = 0
    raced = 0  # claims refused because another attempt held the lease while its body ran
    contended = threading.Event()
    errors: list[BaseException] = []
    done = threading.Event()

    def body(lease: Lease) -> None:
        nonlocal max_holders
        with lock:
            holders.append(lease.attempt)
            max_holders = max(max_holders, len(holders))
            bodies.append(lease.attempt)
        if lease.attempt == 1:  # hold the first lease until a duplicate has raced for it
            contended.wait(timeout=20)
        else:
            time.sleep(0.02)
        with lock:
            holders.remove(lease.attempt)

    def handle(wconn: Connection[Any], message: Message) -> None:
        nonlocal conflicts, raced
        try:
            lease = _claim(wconn, uuid.UUID(message.payload["task_id"]))
        except LeaseConflict as exc:
            with lock:
                conflicts += 1
                if exc.reason == "leased" and holders:
                    raced += 1
                    contended.set()
            driver.ack(message)
            return
        body(lease)
        with wconn.transaction():
            if lease.attempt < 3:
                complete_failure(wconn, lease, error="flaky", fatal=False, policy=NO_BACKOFF)
            else:
                complete_success(wconn, lease, {"ok": True})
                done.set()
        driver.ack(message)

    def worker() -> None:
        try:
            with connect(dbs.state_url, autocommit=True) as wconn:
                while not done.is_set():
                    for message in driver.receive(
                        TASK_WAKEUP, 1, visibility_timeout=30, wait_seconds=0.2
                    ):
                        handle(wconn, message)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)
            done.set()

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while not done.is_set() and time.monotonic() < deadline:
        outbox.drain_all(conn, driver)  # the dispatcher: publishes the retries' wake-ups
        time.sleep(0.02)
    done.set()
    for t in threads:
        t.join(timeout=10)
    assert errors == []
    assert contended.is_set() and raced >= 1  # the race really happened
    assert bodies == [1, 2, 3]
    assert max_holders == 1
    # every other wake-up (20 + 2 retries) found the task leased or finished, or is unread
    assert conflicts + len(bodies) + driver.stats(TASK_WAKEUP).depth == 22
    assert _status(conn, task_id) == ("succeeded", 3)
    assert _outcomes(conn, task_id) == [(1, "retryable"), (2, "retryable"), (3, "succeeded")]


KILLED_WORKER = """
import sys, time, uuid
from trace_core.db.connection import connect
from trace_core.tasks import claim
with connect(sys.argv[1]) as conn:
    with conn.transaction():
        lease = claim(conn, uuid.UUID(sys.argv[2]), lease_seconds=1.5)
print("claimed", lease.attempt, flush=True)
time.sleep(600)
"""


def test_killed_worker_lease_expires_and_the_task_is_retried_once(
    dbs: Databases, conn: Connection[Any], driver: PgQueue
) -> None:
    task_id = _new_task(conn, max_attempts=3)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WORKER, dbs.state_url, str(task_id)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == ["claimed", "1"]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _status(conn, task_id) == ("running", 1)
    with pytest.raises(LeaseConflict):  # not before the lease expires
        _claim(conn, task_id)

    def reaped() -> bool:
        with conn.transaction():
            return reap(conn, policy=NO_BACKOFF, rewake_after_seconds=600).retried == 1

    _poll(reaped, 10, "the reaper to retry the expired lease")
    assert _status(conn, task_id) == ("queued", 1)

    assert outbox.drain_all(conn, driver) == 2  # the first wake-up and the retry's
    successes = 0
    for message in driver.receive(TASK_WAKEUP, 10, visibility_timeout=30):
        try:
            lease = _claim(conn, uuid.UUID(message.payload["task_id"]))
        except LeaseConflict:
            driver.ack(message)
            continue
        with conn.transaction():
            complete_success(conn, lease)
        successes += 1
        driver.ack(message)
    assert successes == 1
    assert _status(conn, task_id) == ("succeeded", 2)
    assert _outcomes(conn, task_id) == [(1, "expired"), (2, "succeeded")]


def test_stale_attempt_cannot_complete_or_heartbeat(conn: Connection[Any]) -> None:
    task_id = _new_task(conn)
    first = _claim(conn, task_id, lease_seconds=0)  # expires at once (database clock)
    second = _claim(conn, task_id)  # takeover: attempt 2
    assert (first.attempt, second.attempt) == (1, 2)
    before = _snapshot(conn, task_id)
    for stale_call in (
        lambda: complete_success(conn, first, {"from": "stale"}),
        lambda: heartbeat(conn, first, lease_seconds=30),
        lambda: complete_failure(conn, first, error="x", fatal=True, policy=NO_BACKOFF),
    ):
        with pytest.raises(StaleAttempt), conn.transaction():
            stale_call()
        assert _snapshot(conn, task_id) == before
    with conn.transaction():
        heartbeat(conn, second, lease_seconds=30)
        complete_success(conn, second, {"from": "current"})
    assert _status(conn, task_id) == ("succeeded", 2)
    with pytest.raises(StaleAttempt), conn.transaction():
        complete_success(conn, second)  # finished: even the last attempt is stale now


def test_retryable_failure_requeues_with_backoff_through_the_outbox(
    conn: Connection[Any], driver: PgQueue
) -> None:
    task_id = _new_task(conn)
    assert outbox.drain_all(conn, driver) == 1
    lease = _claim(conn, task_id)
    with conn.transaction():
        decision = complete_failure(
            conn, lease, error="rpc timeout", fatal=False, policy=RetryPolicy(base_seconds=30)
        )
    assert decision == "retry"
    row = conn.execute(
        "SELECT status, last_error, extract(epoch FROM next_run_at - now()) FROM state.tasks"
        " WHERE task_id = %s",
        (task_id,),
    ).fetchone()
    assert row is not None and row[:2] == ("queued", "rpc timeout")
    assert 28 < row[2] <= 30
    assert outbox.pending_counts(conn) == (0, 1)  # the wake-up waits out the backoff
    assert outbox.drain_all(conn, driver) == 0
    with pytest.raises(LeaseConflict, match="backoff"):
        _claim(conn, task_id)
    # move the clock: the backoff is over
    conn.execute("UPDATE state.tasks SET next_run_at = now() WHERE task_id = %s", (task_id,))
    conn.execute("UPDATE state.outbox SET available_at = now() WHERE status = 'pending'")
    assert outbox.drain_all(conn, driver) == 1
    assert _claim(conn, task_id).attempt == 2


def test_fatal_failure_ends_dead_at_once(conn: Connection[Any]) -> None:
    task_id = _new_task(conn, max_attempts=5)
    lease = _claim(conn, task_id)
    with conn.transaction():
        assert (
            complete_failure(conn, lease, error="bad input", fatal=True, policy=NO_BACKOFF)
            == "dead"
        )
    assert _status(conn, task_id) == ("dead", 1)
    assert outbox.pending_counts(conn) == (1, 1)  # only the creation's wake-up, no retry
    with pytest.raises(LeaseConflict, match="dead"):
        _claim(conn, task_id)


def test_max_attempts_ends_dead(conn: Connection[Any]) -> None:
    task_id = _new_task(conn, max_attempts=2)
    for attempt, expected in ((1, "retry"), (2, "dead")):
        lease = _claim(conn, task_id)
        assert lease.attempt == attempt
        with conn.transaction():
            assert (
                complete_failure(conn, lease, error=f"e{attempt}", fatal=False, policy=NO_BACKOFF)
                == expected
            )
    row = conn.execute(
        "SELECT status, attempt, last_error FROM state.tasks WHERE task_id = %s", (task_id,)
    ).fetchone()
    assert row == ("dead", 2, "e2")
    assert _outcomes(conn, task_id) == [(1, "retryable"), (2, "retryable")]


def test_reaper_ends_an_expired_last_attempt_dead(conn: Connection[Any]) -> None:
    task_id = _new_task(conn, max_attempts=1)
    _claim(conn, task_id, lease_seconds=0)
    with conn.transaction():
        result = reap(conn, policy=NO_BACKOFF, rewake_after_seconds=600)
    assert (result.retried, result.dead) == (0, 1)
    assert _status(conn, task_id) == ("dead", 1)


def test_claim_refuses_leased_finished_and_paused(conn: Connection[Any]) -> None:
    leased = _new_task(conn)
    _claim(conn, leased)
    with pytest.raises(LeaseConflict, match="leased"):
        _claim(conn, leased)

    finished = _new_task(conn)
    with conn.transaction():
        complete_success(conn, _claim(conn, finished))
    with pytest.raises(LeaseConflict, match="succeeded"):
        _claim(conn, finished)

    paused = _new_task(conn, paused=True)
    with pytest.raises(LeaseConflict, match="paused"):
        _claim(conn, paused)
    assert _status(conn, paused) == ("queued", 0)


def test_create_tasks_is_create_task_for_each_row(conn: Connection[Any]) -> None:
    """Bulk creation gives the rows and wake-ups create_task gives, one by one: the same
    columns, the same outbox ids and payloads (a repeat is a no-op either way), no wake-up for
    a paused task, and the transaction stays durable (it wrote outbox rows)."""
    job = uuid.uuid4()
    one, bulk = [uuid.uuid4() for _ in range(3)], [uuid.uuid4() for _ in range(3)]
    specs = [
        dict(operator="noop", payload={"n": 1}),
        dict(operator="op2", payload={"n": [2]}, max_attempts=5, job_id=job),
        dict(operator="noop", payload={}, paused=True, job_id=job),
    ]
    conn.execute("SET synchronous_commit = local")
    with conn.transaction():
        for task_id, spec in zip(one, specs, strict=True):
            assert create_task(conn, task_id=task_id, **spec)  # type: ignore[arg-type]
    with conn.transaction():
        conn.execute("SELECT set_config('trace.completion_sync', 'local', true)")
        conn.execute("SET LOCAL synchronous_commit = off")  # as a completion before it would
        new = [NewTask(t, **spec) for t, spec in zip(bulk, specs, strict=True)]  # type: ignore[arg-type]
        assert create_tasks(conn, [new[0], NewTask(one[0], "noop", {}), *new[1:]]) == bulk
        assert _sync_commit(conn) == "local"  # outbox rows written: durable again
    with conn.transaction():
        assert create_tasks(conn, new) == []  # repeats change nothing

    def rows(ids: list[uuid.UUID]) -> list[tuple[Any, ...]]:
        got = []
        for task_id in ids:
            task = conn.execute(
                "SELECT operator, status, attempt, max_attempts, paused, payload, job_id, org_id,"
                " wakeups FROM state.tasks WHERE task_id = %s",
                (task_id,),
            ).fetchone()
            wake = conn.execute(
                "SELECT topic, payload - 'task_id', status FROM state.outbox WHERE outbox_id = %s",
                (outbox.outbox_id(f"task_wakeup:{task_id}:1"),),
            ).fetchone()
            got.append((task, wake))
        return got

    assert rows(bulk) == rows(one)
    assert [w for _, w in rows(bulk)] == [(TASK_WAKEUP, {"wakeup": 1}, "pending")] * 2 + [None]


def test_claim_outside_a_transaction_decides_as_inside(conn: Connection[Any]) -> None:
    """On an autocommit connection with no transaction open, the common claim is one statement
    and the other cases run in a transaction of claim's own: same leases, same refusals, and
    a refusal leaves nothing half-written or open."""
    from psycopg.pq import TransactionStatus

    task_id = _new_task(conn, max_attempts=2)
    first = claim(conn, task_id, lease_seconds=0)  # fast path, expires at once
    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert (first.attempt, first.operator, first.payload) == (1, "noop", {"n": 1})
    assert _outcomes(conn, task_id) == [(1, None)]
    second = claim(conn, task_id, lease_seconds=30)  # takeover: the locked-row path
    assert (second.attempt, _status(conn, task_id)) == (2, ("running", 2))
    assert _outcomes(conn, task_id) == [(1, "expired"), (2, None)]
    before = _snapshot(conn, task_id)
    with pytest.raises(LeaseConflict, match="leased"):
        claim(conn, task_id, lease_seconds=30)
    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert _snapshot(conn, task_id) == before
    complete_success(conn, second)  # one statement, committed on its own
    assert _status(conn, task_id) == ("succeeded", 2)
    assert _outcomes(conn, task_id) == [(1, "expired"), (2, "succeeded")]
    with pytest.raises(StaleAttempt):
        complete_success(conn, second)
    assert conn.info.transaction_status == TransactionStatus.IDLE


def test_lease_times_come_from_the_database_clock(conn: Connection[Any]) -> None:
    task_id = _new_task(conn)
    with conn.transaction():
        db_now = conn.execute("SELECT now()").fetchone()
        lease = claim(conn, task_id, lease_seconds=12.5)
    assert db_now is not None
    assert (lease.lease_expires_at - db_now[0]).total_seconds() == 12.5
    with conn.transaction():
        db_now = conn.execute("SELECT now()").fetchone()
        expires = heartbeat(conn, lease, lease_seconds=40)
    assert db_now is not None
    assert (expires - db_now[0]).total_seconds() == 40


def _sync_commit(conn: Connection[Any]) -> str:
    row = conn.execute("SHOW synchronous_commit").fetchone()
    assert row is not None
    return str(row[0])


def test_a_completion_commits_asynchronously_unless_it_wakes_something(
    conn: Connection[Any],
) -> None:
    """complete_success turns synchronous_commit off for its transaction (commit included);
    a transaction that also writes an outbox row, before or after, keeps the session's setting
    (the drain must only see durable wake-ups); claims and everything after stay as they were.
    The session runs with `local` so that putting the setting back is distinguishable from `on`.
    """
    conn.execute("SET synchronous_commit = local")
    plain, wakes_after, wakes_before, autocommit, claimed = (_new_task(conn) for _ in range(5))
    leases = {t: _claim(conn, t) for t in (plain, wakes_after, wakes_before, autocommit)}
    with conn.transaction():
        claim(conn, claimed, lease_seconds=30)
        assert _sync_commit(conn) == "local"  # a claim stays durable
        complete_success(conn, leases[plain], {"k": 1})
        assert _sync_commit(conn) == "off"  # the setting this transaction commits with
    assert _sync_commit(conn) == "local"
    with conn.transaction():
        complete_success(conn, leases[wakes_after])
        outbox.enqueue(conn, topic="t", payload={"a": 1}, dedupe_name=f"x:{wakes_after}")
        assert _sync_commit(conn) == "local"
    with conn.transaction():
        outbox.enqueue(conn, topic="t", payload={"a": 2}, dedupe_name=f"x:{wakes_before}")
        complete_success(conn, leases[wakes_before])
        assert _sync_commit(conn) == "local"
    complete_success(conn, leases[autocommit])  # one statement, its own transaction
    assert _sync_commit(conn) == "local"
    for t in (plain, wakes_after, wakes_before, autocommit):
        assert _status(conn, t) == ("succeeded", 1)
        assert _outcomes(conn, t) == [(1, "succeeded")]
    assert outbox.pending_counts(conn)[1] == 2 + 5  # two wake-ups above, five tasks' first


def test_a_lost_completion_and_ack_rerun_once_to_the_same_end(
    dbs: Databases, conn: Connection[Any], driver: PgQueue
) -> None:
    """A Postgres crash may forget an asynchronous completion and the ack after it. What is
    left is the state before them (WAL is replayed as a prefix): a running attempt and an
    unacked wake-up. The lease expires, the reaper requeues, and the task runs once more and
    ends as a single success with the same outputs; the redelivered wake-up finds it done."""
    task_id = _new_task(conn)
    assert outbox.drain_all(conn, driver) == 1
    [wake] = driver.receive(TASK_WAKEUP, 1, visibility_timeout=0)
    lease = claim(conn, task_id, lease_seconds=0)  # durable; expires at once (database clock)
    with conn.transaction():  # the completion the crash forgot: as if never committed
        complete_success(conn, lease, {"rows": 10})
        raise Rollback()
    assert _status(conn, task_id) == ("running", 1)  # no ack either: the wake-up is due again
    with conn.transaction():
        assert reap(conn, policy=NO_BACKOFF, rewake_after_seconds=600).retried == 1
    assert outbox.drain_all(conn, driver) == 1
    runs = []
    for _ in range(4):
        for m in driver.receive(TASK_WAKEUP, 10, visibility_timeout=30):
            assert m.payload["task_id"] == str(task_id)
            try:
                again = claim(conn, task_id, lease_seconds=30)
            except LeaseConflict:
                driver.ack(m)
                continue
            runs.append(again.attempt)
            with conn.transaction():
                complete_success(conn, again, {"rows": 10})
            driver.ack(m)
    assert runs == [2]
    assert wake.receive_count == 1
    assert _status(conn, task_id) == ("succeeded", 2)
    assert _outcomes(conn, task_id) == [(1, "expired"), (2, "succeeded")]
    outputs = conn.execute("SELECT outputs FROM state.tasks WHERE task_id = %s", (task_id,))
    assert outputs.fetchone() == ({"rows": 10},)
    assert driver.stats(TASK_WAKEUP).depth == 0 and driver.stats(TASK_WAKEUP).in_flight == 0
