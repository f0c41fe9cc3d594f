"""A small connection pool for pgqueue: the batch-1 path pays for every microsecond.

psycopg_pool's ``connection()`` costs ~20 us of client CPU per borrow (stats, lifetime checks,
the waiting-client machinery), about as much as the statement it wraps on a batch-1 receive or
ack. pgqueue needs less: a LIFO stack of autocommit connections, each with its cursor, bounded
by ``max_size``, a wait with a timeout when all are out, and a connection that comes back
broken or inside a transaction closed instead of reused. Thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus


class PoolTimeout(Exception):
    """No connection came free within the pool's timeout."""


class PgConns:
    """Up to ``max_size`` connections to ``url`` (autocommit, server-side prepared statements,
    the given ``options``). ``open()`` connects the first one (raising what psycopg raises);
    ``borrow()`` yields a cursor of an idle connection, connecting another one when all are
    out and ``max_size`` allows, else waiting up to ``timeout`` seconds (``PoolTimeout``)."""

    def __init__(self, url: str, *, max_size: int, options: str, timeout: float) -> None:
        self._url = url
        self._max_size = max_size
        self._options = options
        self._timeout = timeout
        self._idle: list[psycopg.Cursor[Any]] = []
        self._size = 0  # connections open or being opened, idle or borrowed
        self._closed = True
        self._cond = threading.Condition()

    def open(self) -> None:
        with self._cond:
            self._closed = False
            if self._size:
                return
            self._size = 1
        try:
            cur = self._connect()
        except BaseException:
            with self._cond:
                self._size -= 1
            raise
        self._put(cur)

    def close(self) -> None:
        """Close the idle connections now, and each borrowed one when it comes back."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._size -= len(idle)
            self._cond.notify_all()
        for cur in idle:
            cur.connection.close()

    @contextmanager
    def borrow(self) -> Iterator[psycopg.Cursor[Any]]:
        cur = self._get()
        try:
            yield cur
        finally:
            self._put(cur)

    def _connect(self) -> psycopg.Cursor[Any]:
        conn = psycopg.connect(
            self._url,
            autocommit=True,
            prepare_threshold=0,
            options=self._options,
            connect_timeout=10,
        )
        return conn.cursor()

    def _get(self) -> psycopg.Cursor[Any]:
        deadline = time.monotonic() + self._timeout
        with self._cond:
            while not self._idle and self._size >= self._max_size:
                if self._closed:
                    raise PoolTimeout("the pool is closed")
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    raise PoolTimeout(f"no free connection within {self._timeout} s")
            if self._closed:
                raise PoolTimeout("the pool is closed")
            if self._idle:
                return self._idle.pop()
            self._size += 1
        try:
            return self._connect()
        except BaseException:
            with self._cond:
                self._size -= 1
                self._cond.notify()
            raise

    def _put(self, cur: psycopg.Cursor[Any]) -> None:
        conn = cur.connection
        reusable = not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE
        with self._cond:
            if reusable and not self._closed:
                self._idle.append(cur)
                self._cond.notify()
                return
            self._size -= 1
            self._cond.notify()
        conn.close()
