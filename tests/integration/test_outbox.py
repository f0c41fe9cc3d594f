"""The outbox is the only enqueue path, and it loses nothing.

Crash before drain: a fresh publisher publishes every wake-up exactly once. Crash between
publish and mark: duplicates, never losses. Concurrent publishers: nothing lost or doubled.
A static scan fails the build if any other module calls ``publish``/``publish_batch``.
"""

from __future__ import annotations

import ast
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from trace_core import outbox
from trace_core.db.connection import Databases, connect
from trace_core.queue.base import TASK_WAKEUP, QueueDriver
from trace_core.queue.pgqueue import PgQueue
from trace_core.tasks import create_task

REPO = Path(__file__).resolve().parents[2]
# Modules allowed to call QueueDriver.publish/publish_batch, and why.
PUBLISH_ALLOWED = {
    "trace_core/outbox.py": "the outbox publisher",
    "trace_core/alerts/sns.py": "SNS Publish of an alert's SMS: a delivery, not a queue wake-up",
}
PUBLISH_ALLOWED_DIRS = ("trace_core/queue/",)  # the drivers themselves


@pytest.fixture
def driver(dbs: Databases) -> Iterator[PgQueue]:
    d = PgQueue(dbs.state_url, max_receive_count=5, pool_size=2)
    yield d
    d.close()


def _create_tasks(state_url: str, n: int) -> set[str]:
    ids = {uuid.uuid4() for _ in range(n)}
    with connect(state_url) as conn, conn.transaction():
        for task_id in ids:
            assert create_task(conn, task_id=task_id, operator="noop", payload={})
    return {str(i) for i in ids}


def _wakeups(driver: QueueDriver) -> Counter[str]:
    """Receive and ack everything on the wake-up queue; count wake-ups per task id."""
    seen: Counter[str] = Counter()
    while True:
        got = driver.receive(TASK_WAKEUP, 100, visibility_timeout=60)
        if not got:
            return seen
        seen.update(m.payload["task_id"] for m in got)
        assert driver.ack_batch(got) == []


def _pending(state_url: str) -> int:
    with connect(state_url) as conn:
        return outbox.pending_counts(conn)[1]


def test_crash_before_drain_loses_nothing(dbs: Databases, driver: PgQueue) -> None:
    tasks = _create_tasks(dbs.state_url, 40)  # committed; the dispatcher "dies" here
    assert _pending(dbs.state_url) == 40
    fresh = PgQueue(dbs.state_url, max_receive_count=5, pool_size=1)
    try:
        with connect(dbs.state_url, autocommit=True) as conn:
            assert outbox.drain_all(conn, fresh, batch_size=15) == 40
            assert outbox.drain_all(conn, fresh, batch_size=15) == 0
    finally:
        fresh.close()
    seen = _wakeups(driver)
    assert set(seen) == tasks and set(seen.values()) == {1}  # exactly once each
    assert _pending(dbs.state_url) == 0


class _Crash(Exception):
    """The publisher process dying after the queue accepted the batch."""


class CrashAfterPublish:
    """Publishes through the real driver, then "crashes" before the outbox marks the rows."""

    def __init__(self, inner: QueueDriver) -> None:
        self.inner = inner
        self.published = 0

    def publish_batch(
        self, queue: str, payloads: Sequence[Mapping[str, Any]], *, delay_seconds: float = 0
    ) -> list[str]:
        ids = self.inner.publish_batch(queue, payloads, delay_seconds=delay_seconds)
        self.published += len(ids)
        raise _Crash


def test_crash_between_publish_and_mark_duplicates_not_loses(
    dbs: Databases, driver: PgQueue
) -> None:
    tasks = _create_tasks(dbs.state_url, 10)
    crashing = CrashAfterPublish(driver)
    with connect(dbs.state_url, autocommit=True) as conn, pytest.raises(_Crash):
        outbox.drain(conn, crashing, batch_size=100)  # type: ignore[arg-type]
    assert crashing.published == 10
    assert _pending(dbs.state_url) == 10  # the mark rolled back with the crash
    with connect(dbs.state_url, autocommit=True) as conn:
        assert outbox.drain_all(conn, driver) == 10
    seen = _wakeups(driver)
    assert set(seen) == tasks and set(seen.values()) == {2}  # duplicated, none lost
    assert _pending(dbs.state_url) == 0


def test_concurrent_publishers_lose_nothing(dbs: Databases, driver: PgQueue) -> None:
    tasks = _create_tasks(dbs.state_url, 300)
    counts: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def publisher() -> None:
        own = PgQueue(dbs.state_url, max_receive_count=5, pool_size=1)
        try:
            with connect(dbs.state_url, autocommit=True) as conn:
                start.wait()
                total = 0
                while n := outbox.drain(conn, own, batch_size=7):
                    total += n
                counts.append(total)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=publisher) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sum(counts) == 300 and len(counts) == 4
    seen = _wakeups(driver)
    assert set(seen) == tasks and set(seen.values()) == {1}
    assert _pending(dbs.state_url) == 0


def test_outbox_row_and_intent_commit_together(dbs: Databases) -> None:
    """A rolled-back intent leaves no outbox row: nothing to publish for a task that isn't."""
    with connect(dbs.state_url) as conn:
        with pytest.raises(_Crash), conn.transaction():
            create_task(conn, task_id=uuid.uuid4(), operator="noop", payload={})
            raise _Crash
        n_tasks = conn.execute("SELECT count(*) FROM state.tasks").fetchone()
    assert n_tasks == (0,)
    assert _pending(dbs.state_url) == 0


def _publish_calls(path: Path) -> list[int]:
    """Line numbers of ``<expr>.publish(...)`` / ``<expr>.publish_batch(...)`` calls."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("publish", "publish_batch")
    ]


def test_only_the_outbox_enqueues() -> None:
    """Invariant 4: a new direct enqueue path anywhere else breaks the build."""
    offenders = []
    scanned = 0
    for package in ("trace_core", "trace_dagster"):
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            scanned += 1
            if rel in PUBLISH_ALLOWED or rel.startswith(PUBLISH_ALLOWED_DIRS):
                continue
            offenders += [f"{rel}:{line}" for line in _publish_calls(path)]
    assert scanned > 10
    assert offenders == [], f"direct QueueDriver.publish outside the outbox: {offenders}"
    assert _publish_calls(REPO / "trace_core/outbox.py"), "the scan no longer sees the outbox"


def test_the_scan_catches_a_direct_publish(tmp_path: Path) -> None:
    rogue = tmp_path / "rogue.py"
    rogue.write_text("def f(rt):\n    rt.queue.publish('task_wakeup', {})\n    x = 1\n")
    assert _publish_calls(rogue) == [2]
