"""Driver errors -> the TraceError hierarchy, at each boundary, with the cause kept.

psycopg raises one class per SQLSTATE; callers above ``db`` only see Trace errors:
- a lost or refused connection (SQLSTATE class 08, an admin shutdown 57P0x, or an
  ``OperationalError`` without a state) -> ``DatabaseUnreachable`` (retryable);
- anything else the server or driver refuses -> ``DatabaseError`` (retryable: a task that
  hits it is retried like any failure, and its attempt history names the SQLSTATE).
The original exception stays as ``__cause__``. Messages carry the driver's first line, never
a connection string.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import psycopg

from trace_core.errors import DatabaseError, DatabaseUnreachable, TraceError

P = ParamSpec("P")
R = TypeVar("R")

_UNREACHABLE_STATES = frozenset({"57P01", "57P02", "57P03"})


def translate(exc: psycopg.Error, what: str) -> TraceError:
    """The Trace error for a driver error raised while doing ``what``."""
    state = exc.sqlstate or ""
    line = (str(exc).strip().splitlines() or [""])[0]
    message = f"{what}: {type(exc).__name__}: {line}" if line else f"{what}: {type(exc).__name__}"
    fields = {"sqlstate": state} if state else {}
    if isinstance(exc, psycopg.OperationalError) and (
        not state or state.startswith("08") or state in _UNREACHABLE_STATES
    ):
        return DatabaseUnreachable(message, **fields)
    return DatabaseError(message, **fields)


@contextmanager
def db_errors(what: str) -> Iterator[None]:
    """Translate driver errors raised in the block (``raise ... from exc``)."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc, what) from exc


def translates_db_errors(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator form of ``db_errors`` for a boundary function (not a generator)."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            with db_errors(what):
                return fn(*args, **kwargs)

        return inner

    return wrap
