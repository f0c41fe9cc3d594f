"""The QueueDriver contract, run against pgqueue (real Postgres) and SQS (moto's server).

Visibility expiry is driven, not waited for: pgqueue moves the message's clock in SQL, SQS
sets its visibility to 0 through the raw API. Where the drivers really differ (stale receipts
across processes, error text on SQS redrive, age of the oldest message) the difference is
tested per driver, not hidden.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import boto3
import psycopg
import pytest

from trace_core.errors import StaleReceipt
from trace_core.queue.base import Message, QueueDriver
from trace_core.queue.factory import make_queue_driver
from trace_core.queue.pgqueue import PgQueue
from trace_core.queue.sqs import SqsQueue
from trace_core.settings import load_settings

MAX_RECEIVES = 3
VIS = 60
KINDS = ["pgqueue", "sqs"]
T = TypeVar("T")


@dataclass
class Harness:
    kind: str
    driver: QueueDriver
    expire: Callable[[Message], None]  # end the message's visibility now
    settle: Callable[[], None]  # let a visibility change made "now" take effect
    new_driver: Callable[[], QueueDriver]  # another instance, as another process has

    @property
    def keeps_error_on_redrive(self) -> bool:
        return self.kind == "pgqueue"


def _pg_expire(state_url: str) -> Callable[[Message], None]:
    def expire(message: Message) -> None:
        with psycopg.connect(state_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE state.queue_messages SET available_at = now() - interval '1 ms',"
                " invisible_until = now() - interval '1 ms' WHERE message_id = %s",
                (int(message.message_id),),
            )

    return expire


def _sqs_settle() -> None:
    # moto keeps visibility in whole milliseconds and shows a message only once its clock is
    # strictly past that instant: step over the current millisecond.
    time.sleep(0.002)


def _sqs_expire(driver: SqsQueue, endpoint: str) -> Callable[[Message], None]:
    client = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")

    def expire(message: Message) -> None:
        client.change_message_visibility(
            QueueUrl=driver.queue_url(message.queue),
            ReceiptHandle=message.receipt,
            VisibilityTimeout=0,
        )
        _sqs_settle()

    return expire


@contextmanager
def open_harness(
    kind: str, request: pytest.FixtureRequest, *, max_receive_count: int = MAX_RECEIVES
) -> Iterator[Harness]:
    """A driver of ``kind`` with its test hooks; closes every driver it made."""
    made: list[QueueDriver] = []
    if kind == "pgqueue":
        state_url = request.getfixturevalue("queue_state_url")
        with psycopg.connect(state_url, autocommit=True) as conn:
            conn.execute("TRUNCATE state.queue_messages, state.queue_dead")

        def new_driver() -> QueueDriver:
            made.append(PgQueue(state_url, max_receive_count=max_receive_count, pool_size=2))
            return made[-1]

        harness = Harness(kind, new_driver(), _pg_expire(state_url), lambda: None, new_driver)
    else:
        endpoint = request.getfixturevalue("moto_server_url")
        prefix = f"t{uuid.uuid4().hex[:8]}-"

        def new_driver() -> QueueDriver:
            made.append(
                SqsQueue(
                    max_receive_count=max_receive_count, queue_prefix=prefix, endpoint_url=endpoint
                )
            )
            return made[-1]

        first = new_driver()
        assert isinstance(first, SqsQueue)
        harness = Harness(kind, first, _sqs_expire(first, endpoint), _sqs_settle, new_driver)
    try:
        yield harness
    finally:
        for driver in made:
            driver.close()


@pytest.fixture(params=KINDS)
def qh(request: pytest.FixtureRequest) -> Iterator[Harness]:
    with open_harness(request.param, request) as harness:
        yield harness


def _receive_one(h: Harness, queue: str = "q") -> Message:
    got = h.driver.receive(queue, 1, visibility_timeout=VIS)
    assert len(got) == 1
    return got[0]


def _redeliver(h: Harness, first: Message) -> Message:
    """Expire ``first`` and receive its redelivery."""
    h.expire(first)
    again = _receive_one(h, first.queue)
    assert again.message_id == first.message_id
    return again


def test_publish_receive_ack(qh: Harness) -> None:
    d = qh.driver
    ids = d.publish_batch("q", [{"n": 0}, {"n": 1}, {"n": 2}]) + [d.publish("q", {"n": 3})]
    assert len(set(ids)) == 4
    got = d.receive("q", 10, visibility_timeout=VIS)
    assert sorted(m.payload["n"] for m in got) == [0, 1, 2, 3]
    assert {m.message_id for m in got} == set(ids)
    assert all(m.receive_count == 1 and m.queue == "q" for m in got)
    assert len({m.receipt for m in got}) == 4
    assert (d.stats("q").depth, d.stats("q").in_flight) == (0, 4)
    assert d.receive("q", 10, visibility_timeout=VIS) == []  # all in flight
    d.ack(got[0])
    assert d.ack_batch(got[1:]) == []
    stats = d.stats("q")
    assert (stats.depth, stats.in_flight, stats.dead) == (0, 0, 0)
    assert d.receive("q", 10, visibility_timeout=VIS) == []
    assert d.receive("other", 10, visibility_timeout=VIS) == []  # queues are separate


def test_visibility_expiry_redelivers_with_next_count(qh: Harness) -> None:
    mid = qh.driver.publish("q", {"k": "v"})
    first = _receive_one(qh)
    assert (first.message_id, first.receive_count) == (mid, 1)
    second = _redeliver(qh, first)
    assert second.receive_count == 2 and second.receipt != first.receipt
    assert second.payload == {"k": "v"}


def test_stale_receipt_cannot_touch_the_redelivered_copy(qh: Harness) -> None:
    d = qh.driver
    d.publish("q", {"k": 1})
    first = _receive_one(qh)
    second = _redeliver(qh, first)
    for op in (lambda: d.ack(first), lambda: d.extend(first, 1), lambda: d.nack(first)):
        with pytest.raises(StaleReceipt):
            op()
    assert d.ack_batch([first]) == [first]
    assert (d.stats("q").in_flight, d.stats("q").depth) == (1, 0)  # nothing changed
    assert d.receive("q", 1, visibility_timeout=VIS) == []  # still hidden for its holder
    d.extend(second, VIS)
    d.ack(second)
    with pytest.raises(StaleReceipt):  # gone: its last receipt is stale too
        d.ack(second)
    assert d.stats("q").in_flight == 0


@pytest.mark.parametrize("kind", ["pgqueue"])
def test_pgqueue_fences_stale_receipts_across_processes(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """pgqueue checks the receipt in the database: another instance is fenced too."""
    with open_harness(kind, request) as h:
        h.driver.publish("q", {"k": 1})
        first = _receive_one(h)
        second = _redeliver(h, first)
        other = h.new_driver()
        with pytest.raises(StaleReceipt):
            other.ack(first)
        with pytest.raises(StaleReceipt):
            other.extend(first, 1)
        assert h.driver.stats("q").in_flight == 1
        other.ack(second)  # the current receipt works from anywhere
        assert h.driver.stats("q").in_flight == 0


@pytest.mark.parametrize("kind", ["sqs"])
def test_sqs_stale_receipt_from_another_process_is_not_fenced(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """SQS (moto here; AWS documents a stale delete as "succeeds, might not delete") does
    not fence receipts: only the instance that saw the redelivery rejects the old receipt.
    Another instance's stale ack deletes the current copy. Safe because queue messages are
    wake-ups and the task lease in Postgres is the fence."""
    with open_harness(kind, request) as h:
        h.driver.publish("q", {"k": 1})
        first = _receive_one(h)
        second = _redeliver(h, first)
        with pytest.raises(StaleReceipt):
            h.driver.ack(first)  # this instance knows better
        other = h.new_driver()
        other.extend(first, VIS)  # accepted by moto (AWS rejects it: StaleReceipt)
        other.ack(first)  # accepted, and it deletes the redelivered copy
        stats = h.driver.stats("q")
        assert (stats.depth, stats.in_flight) == (0, 0)
        h.driver.ack(second)  # deleting again is not an error on SQS


def test_ack_batch_skips_and_reports_stale(qh: Harness) -> None:
    d = qh.driver
    d.publish_batch("q", [{"n": i} for i in range(3)])
    a, b, c = sorted(d.receive("q", 3, visibility_timeout=VIS), key=lambda m: m.payload["n"])
    b2 = _redeliver(qh, b)
    assert d.ack_batch([a, b, c]) == [b]
    stats = d.stats("q")
    assert (stats.depth, stats.in_flight) == (0, 1)
    assert d.ack_batch([b, b2]) == [b]  # same message, old and current receipt
    assert d.stats("q").in_flight == 0


def test_ack_receive_acks_what_was_done_and_receives_the_next(qh: Harness) -> None:
    d = qh.driver
    d.publish_batch("q", [{"n": 0}, {"n": 1}])
    stale, (a,) = d.ack_receive([], "q", 1, visibility_timeout=VIS)
    assert stale == [] and a.receive_count == 1
    stale, (b,) = d.ack_receive([a], "q", 1, visibility_timeout=VIS)
    assert stale == [] and b.message_id != a.message_id
    c = _redeliver(qh, b)  # b's receipt is stale now
    x = d.publish("q", {"n": 2})
    qh.settle()
    stale, got = d.ack_receive([b], "q", 1, visibility_timeout=VIS)
    assert stale == [b] and [m.message_id for m in got] == [x]  # c stays in flight
    assert (d.stats("q").depth, d.stats("q").in_flight) == (0, 2)
    stale, nothing = d.ack_receive([c, *got], "q", 1, visibility_timeout=VIS)
    assert (stale, nothing) == ([], [])
    stats = d.stats("q")
    assert (stats.depth, stats.in_flight, stats.dead) == (0, 0, 0)


def test_nack_makes_message_receivable_again(qh: Harness) -> None:
    d = qh.driver
    d.publish("q", {"k": 1})
    first = _receive_one(qh)
    d.nack(first, error="transient")
    qh.settle()
    again = _receive_one(qh)
    assert again.receive_count == 2
    with pytest.raises(StaleReceipt):
        d.ack(first)  # a nacked receipt is spent
    d.ack(again)


def test_poison_message_is_dead_lettered_with_reason_and_error(qh: Harness) -> None:
    d = qh.driver
    mid = d.publish("q", {"poison": True})
    for attempt in range(1, MAX_RECEIVES + 1):
        qh.settle()
        m = _receive_one(qh)
        assert m.receive_count == attempt
        d.nack(m, error=f"boom {attempt}")
    qh.settle()
    assert d.receive("q", 10, visibility_timeout=VIS) == []
    (dead,) = d.list_dead("q")
    assert (dead.message_id, dead.payload, dead.reason) == (
        mid,
        {"poison": True},
        "max_receive_count",
    )
    assert dead.last_error == f"boom {MAX_RECEIVES}"
    assert dead.receive_count == MAX_RECEIVES
    stats = d.stats("q")
    assert (stats.depth, stats.in_flight, stats.dead) == (0, 0, 1)


def test_crashing_consumer_dead_letters_on_next_receive(qh: Harness) -> None:
    """Receives that expire (a consumer died) count too; the message is buried when it
    becomes due after its last receive, instead of being delivered again."""
    d = qh.driver
    mid = d.publish("q", {"poison": "silent"})
    first = _receive_one(qh)
    d.nack(first, error="first failure")  # pgqueue keeps this error; SQS cannot
    qh.settle()
    m = _receive_one(qh)
    for _ in range(MAX_RECEIVES - 2):
        m = _redeliver(qh, m)
    assert m.receive_count == MAX_RECEIVES
    qh.expire(m)
    assert d.receive("q", 10, visibility_timeout=VIS) == []
    (dead,) = d.list_dead("q")
    assert (dead.message_id, dead.reason, dead.receive_count) == (
        mid,
        "max_receive_count",
        MAX_RECEIVES,
    )
    assert dead.last_error == ("first failure" if qh.keeps_error_on_redrive else None)
    with pytest.raises(StaleReceipt):
        d.ack(m)


def test_delay_and_extend_hide_messages(qh: Harness) -> None:
    d = qh.driver
    d.publish("q", {"k": "held"})
    (held,) = d.receive("q", 1, visibility_timeout=1)
    d.extend(held, VIS)
    d.publish("q", {"k": "late"}, delay_seconds=1)  # due after held's original 1 s is over
    assert d.receive("q", 10, visibility_timeout=VIS) == []
    stats = d.stats("q")
    assert (stats.depth, stats.in_flight) == (1, 1)  # delayed messages count as depth
    t0 = time.monotonic()
    got = d.receive("q", 10, visibility_timeout=VIS, wait_seconds=5)
    assert [m.payload for m in got] == [{"k": "late"}]
    assert time.monotonic() - t0 > 0.5
    qh.settle()
    # held's first visibility has ended by now; only the extend keeps it hidden
    assert d.receive("q", 10, visibility_timeout=VIS) == []
    assert d.stats("q").in_flight == 2


def test_long_poll_returns_when_a_message_arrives(qh: Harness) -> None:
    d = qh.driver
    d.receive("q", 1, visibility_timeout=VIS)  # queue exists before the timer fires
    timer = threading.Timer(0.3, lambda: d.publish("q", {"k": "wake"}))
    timer.start()
    try:
        got = d.receive("q", 5, visibility_timeout=VIS, wait_seconds=5)
    finally:
        timer.join()
    assert [m.payload for m in got] == [{"k": "wake"}]


def test_receive_gathers_more_than_one_sqs_batch(qh: Harness) -> None:
    d = qh.driver
    d.publish_batch("q", [{"n": i} for i in range(23)])
    got = d.receive("q", 25, visibility_timeout=VIS)
    assert sorted(m.payload["n"] for m in got) == list(range(23))
    assert d.ack_batch(got) == []


def test_stats(qh: Harness) -> None:
    d = qh.driver
    empty = d.stats("q")
    assert (empty.depth, empty.in_flight, empty.dead, empty.oldest_age_seconds) == (0, 0, 0, None)
    d.publish_batch("q", [{"n": i} for i in range(4)])
    got = d.receive("q", 1, visibility_timeout=VIS)
    stats = d.stats("q")
    assert (stats.depth, stats.in_flight, stats.dead) == (3, 1, 0)
    if qh.kind == "pgqueue":
        assert stats.oldest_age_seconds is not None and stats.oldest_age_seconds >= 0
    else:
        # CloudWatch's ApproximateAgeOfOldestMessage: moto publishes no SQS metrics (see
        # tests/integration/test_metrics.py for a published datapoint)
        assert stats.oldest_age_seconds is None
    d.ack(got[0])
    assert d.stats("q").in_flight == 0


def _kill(h: Harness, payload: dict[str, object]) -> str:
    """Publish and dead-letter one message through nacks; returns its id."""
    mid = h.driver.publish("q", payload)
    for _ in range(MAX_RECEIVES):
        h.settle()
        got = [m for m in h.driver.receive("q", 10, visibility_timeout=VIS) if m.message_id == mid]
        (m,) = got
        h.driver.nack(m, error="poison")
    return mid


def test_dead_letters_replay_and_purge(qh: Harness) -> None:
    d = qh.driver

    def settled(value: T) -> T:
        qh.settle()  # SQS scans the DLQ by receiving it, then releases what it kept
        return value

    a = _kill(qh, {"n": "a"})
    b = _kill(qh, {"n": "b"})
    c = _kill(qh, {"n": "c"})
    assert {m.message_id for m in settled(d.list_dead("q"))} == {a, b, c}
    assert len(settled(d.list_dead("q", limit=2))) == 2
    assert d.stats("q").dead == 3

    assert settled(d.replay_dead("q", [a])) == 1
    (back,) = d.receive("q", 10, visibility_timeout=VIS)
    assert back.payload == {"n": "a"} and back.receive_count == 1  # count reset
    d.ack(back)

    assert settled(d.purge_dead("q", [b])) == 1
    assert [m.payload for m in settled(d.list_dead("q"))] == [{"n": "c"}]
    assert settled(d.replay_dead("q", ["no-such-id"])) == 0
    assert settled(d.replay_dead("q")) == 1
    assert d.stats("q").dead == 0
    (c_back,) = d.receive("q", 10, visibility_timeout=VIS)
    d.ack(c_back)
    _kill(qh, {"n": "d"})
    assert d.purge_dead("q") == 1
    stats = d.stats("q")
    assert (stats.depth, stats.in_flight, stats.dead) == (0, 0, 0)


def test_factory_picks_the_configured_driver(
    queue_state_url: str, moto_server_url: str, tmp_path: Path
) -> None:
    settings = load_settings(home=tmp_path, max_receive_count=4)
    pg = make_queue_driver(settings, queue_state_url)
    try:
        assert isinstance(pg, PgQueue) and pg.max_receive_count == 4
        pg.publish("factory", {"ok": True})
        assert pg.stats("factory").depth == 1
    finally:
        pg.close()
    sqs_settings = settings.model_copy(
        update={
            "queue_driver": "sqs",
            "sqs_endpoint_url": moto_server_url,
            "sqs_queue_prefix": f"f{uuid.uuid4().hex[:6]}-",
        }
    )
    sqs = make_queue_driver(sqs_settings, queue_state_url)
    try:
        assert isinstance(sqs, SqsQueue) and sqs.max_receive_count == 4
        sqs.publish("factory", {"ok": True})
        assert sqs.queue_url("factory").endswith(f"{sqs_settings.sqs_queue_prefix}factory")
        assert sqs.stats("factory").depth == 1
    finally:
        sqs.close()


def test_pgqueue_pool_reuses_idle_connections_and_drops_broken_ones(queue_state_url: str) -> None:
    """pgqueue's own pool (``PgConns``): a LIFO of idle connections up to ``max_size``; one
    that comes back inside a transaction, or whose server session died, is closed and
    replaced; every caller waits at most ``timeout`` for a free one."""
    from trace_core.errors import QueueError
    from trace_core.queue.pgconns import PgConns, PoolTimeout

    pool = PgConns(queue_state_url, max_size=2, options="", timeout=0.05)
    pool.open()

    def pid() -> int:
        with pool.borrow() as cur:
            row = cur.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        return int(row[0])

    first = pid()
    assert pid() == first  # reused, not reconnected
    with pool.borrow() as a, pool.borrow() as b:
        assert a.connection is not b.connection  # a second one within max_size
        with pytest.raises(PoolTimeout), pool.borrow():
            pass  # both out: the third caller times out
    with pool.borrow() as cur:
        cur.execute("BEGIN")  # comes back inside a transaction: closed, not reused
        left_open = cur.connection
    assert left_open.closed
    killed = {first, pid()}
    with psycopg.connect(queue_state_url, autocommit=True) as admin:
        for p in killed:
            admin.execute("SELECT pg_terminate_backend(%s)", (p,))
    failures, fresh = 0, None
    for _ in range(3):  # each idle connection fails once and is dropped; then a fresh one
        try:
            fresh = pid()
            break
        except psycopg.OperationalError:
            failures += 1
    assert 1 <= failures <= 2 and fresh is not None and fresh not in killed
    pool.close()
    with pytest.raises(PoolTimeout):
        pid()

    # through the driver: a dead connection is one QueueError, and the next call reconnects
    driver = PgQueue(queue_state_url, max_receive_count=MAX_RECEIVES, pool_size=1)
    with driver:
        driver.publish_batch("pool", [{"n": 1}])
        with driver._consume_pool.borrow() as cur, psycopg.connect(queue_state_url) as admin:
            backend = cur.execute("SELECT pg_backend_pid()").fetchone()
            admin.execute("SELECT pg_terminate_backend(%s)", (backend[0] if backend else 0,))
        with pytest.raises(QueueError):
            driver.receive("pool", 1, visibility_timeout=VIS)
        (m,) = driver.receive("pool", 1, visibility_timeout=VIS)
        driver.ack(m)
