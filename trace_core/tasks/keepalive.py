"""Keeping a lease alive while an attempt works: one thread that extends it every
``heartbeat_seconds`` and notices when it is gone.

Used by the worker around every operator and by ``run_cryo_ingest`` when cryo_ingest runs
without a worker (benchmarks, tests).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from trace_core.db.connection import StateConnect
from trace_core.errors import StaleAttempt, TraceError
from trace_core.settings import Settings
from trace_core.tasks import lifecycle
from trace_core.tasks.lifecycle import Lease

log = logging.getLogger(__name__)

__all__ = ["LeaseHeartbeat", "StateConnect", "lease_heartbeat"]


def lease_heartbeat(settings: Settings, lease: Lease, state: StateConnect) -> Callable[[], None]:
    """A heartbeat callback extending ``lease`` in its own short transaction."""

    def beat() -> None:
        with state() as conn, conn.transaction():
            lifecycle.heartbeat(conn, lease, lease_seconds=settings.lease_seconds)

    return beat


class LeaseHeartbeat:
    """Calls ``beat`` every ``interval`` seconds on a thread while ``running()``.

    ``StaleAttempt`` from ``beat`` marks the lease lost (``lost``) and ends the thread; other
    Trace errors (a database blip) are logged and retried on the next tick, until the lease
    would lapse.
    """

    def __init__(self, beat: Callable[[], None], interval: float, lease: Lease) -> None:
        self._beat = beat
        self._interval = interval
        self._lease = lease
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{lease.task_id}", daemon=True
        )

    def _run(self) -> None:
        fields = {"task_id": str(self._lease.task_id), "attempt": self._lease.attempt}
        while not self._stop.wait(self._interval):
            try:
                self._beat()
            except StaleAttempt:
                log.warning("lease lost", extra=fields)
                self.lost.set()
                return
            except TraceError as exc:
                log.warning("heartbeat failed", extra={**fields, "error": str(exc)})

    def check(self) -> None:
        """Raise ``StaleAttempt`` if a heartbeat found the lease gone."""
        if self.lost.is_set():
            raise StaleAttempt(self._lease.task_id, self._lease.attempt, "lease lost")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop beating (idempotent); returns once the thread has ended."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @contextmanager
    def running(self) -> Iterator[LeaseHeartbeat]:
        self.start()
        try:
            yield self
        finally:
            self.stop()
