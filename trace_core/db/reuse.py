"""State connections a worker run reuses across its attempts, instead of one per claim/commit.

Opening a Postgres connection forks a backend (5-20 ms on a loaded box): a worker opened one
per claim batch and one per commit, the largest part of an attempt's commit. ``Reused`` keeps
the connections a run's threads return (autocommit, idle, not broken) and hands them out
again; it never shares one between threads at once, and ``close()`` (the end of the run)
closes them all. A connection returned inside a transaction, or broken, is closed instead.
Only transaction-scoped state may be used on them (``pg_advisory_xact_lock``, ``SET LOCAL``),
which is all the claim and commit paths use.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from trace_core.db.errors import db_errors


class Reused:
    """A small pool of state connections, opened on demand with ``open`` and kept when idle."""

    def __init__(self, open: Callable[[], psycopg.Connection[Any]], what: str = "state database"):
        self._open = open
        self._what = what
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def __call__(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection for the block (same contract as ``Runtime.state``)."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        with db_errors(self._what):
            if conn is None:
                conn = self._open()
            keep = False
            try:
                yield conn
                keep = not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE
            finally:
                with self._lock:
                    if keep and not self._closed:
                        self._idle.append(conn)
                        conn = None
                if conn is not None:
                    conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> Reused:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
