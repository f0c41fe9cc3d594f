"""Worker runs on one host share its task budget (``TRACE_WORKER_HOST_CONCURRENCY``).

Lite's run queue lets two worker runs run side by side (one ending past its continue
deadline while the next starts, a retry beside a backfill); each ran
``TRACE_WORKER_CONCURRENCY`` tasks, so two continuing runs on a laptop ran twice the attempts
of ``trace-lite run``, and every attempt waited twice as long for a core (issue 25 item 1:
72 ms around cryo per range launched, 27 ms in process, on an idle 2-core box). Each run
holds a shared session advisory lock keyed by its host for its whole life, and executes its
share: the host's budget divided by the worker runs holding that lock, at most
``TRACE_WORKER_CONCURRENCY``, at least one. A run that dies releases its lock with its
connection. Runs on other hosts (an ECS task each) count separately, so there a run's share is
the whole budget.
"""

from __future__ import annotations

import socket
import zlib
from typing import Any

import psycopg

from trace_core.db.errors import db_errors
from trace_core.runtime import Runtime

# pg_advisory_lock_shared(NAMESPACE, host key): the first key marks Trace's worker runs.
NAMESPACE = 0x54524357  # "TRCW"

_JOIN = "SELECT pg_advisory_lock_shared(%(ns)s, %(host)s)"
# The runs holding the host's lock in this database (one row per session holding it).
_COUNT = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 2
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND classid = %(ns)s::bigint::oid AND objid = %(host)s::bigint::oid
"""


def host_key(hostname: str | None = None) -> int:
    """The advisory lock's second key for ``hostname`` (this host's by default): a
    non-negative int4."""
    return zlib.crc32((hostname or socket.gethostname()).encode()) & 0x7FFFFFFF


class HostShare:
    """One worker run's membership of its host's runs; ``share()`` is what it may run now."""

    def __init__(self, conn: psycopg.Connection[Any], *, per_run: int, budget: int, host: int):
        self._conn = conn
        self.per_run = max(1, per_run)
        self.budget = budget if budget > 0 else self.per_run
        self._params = {"ns": NAMESPACE, "host": host}

    @classmethod
    def join(cls, rt: Runtime, hostname: str | None = None) -> HostShare:
        """Count this run among its host's worker runs until ``close()``."""
        s = rt.settings
        conn = rt.private_state()
        share = cls(
            conn,
            per_run=s.worker_concurrency,
            budget=s.worker_host_concurrency,
            host=host_key(hostname),
        )
        try:
            with db_errors("worker host share"):
                conn.execute(_JOIN, share._params)
        except BaseException:
            conn.close()
            raise
        return share

    def runs(self) -> int:
        """Worker runs on this host now, this one included."""
        with db_errors("worker host share"):
            row = self._conn.execute(_COUNT, self._params).fetchone()
        return max(1, int(row[0]) if row else 1)

    def share(self) -> int:
        """Tasks this run may execute at once: the budget split over the host's runs."""
        return max(1, min(self.per_run, self.budget // self.runs()))

    def close(self) -> None:
        self._conn.close()  # the session's lock goes with it

    def __enter__(self) -> HostShare:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
