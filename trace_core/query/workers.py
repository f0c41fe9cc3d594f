"""DuckDB in worker processes: a query that crashes or hangs the engine costs only itself.

``EngineWorkers`` keeps ``size`` pre-forked worker processes (``forkserver`` start method,
with the engine modules preloaded, so replacing one costs milliseconds rather than a Python
start). Each worker runs one query at a time on its main thread, through the same
``engine.execute`` the service used in process (same sandbox: exact ``allowed_paths``,
``enable_external_access=false``, ``lock_configuration``), under OS limits set once at start:

- ``RLIMIT_AS`` (address space): allocations past it fail, which DuckDB reports as out of
  memory (HTTP 413) instead of growing until the kernel's OOM killer picks a victim;
- ``RLIMIT_STACK``: the query thread's stack; recursion past it kills the worker (SIGSEGV);
- ``RLIMIT_CPU``: re-armed before every query to "CPU used so far + the per-query budget"
  (soft limit, all threads); past it the kernel sends SIGXCPU, which kills the worker;
- ``RLIMIT_CORE`` 0: a crash writes no core file.

The parent waits for the reply or the worker's death, and past the wall-clock limit plus a
grace period (the worker's own watchdog should have interrupted DuckDB by then) it kills the
worker. A dead worker is classified by its signal into a clear ``QueryError`` for that query
only, and replaced in the background; other queries run in other workers meanwhile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import resource
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from trace_core.errors import (
    AccessDenied,
    QueryError,
    QueryFailed,
    QueryTimeout,
    TooLarge,
)
from trace_core.query.attach import Relation
from trace_core.query.engine import (
    EngineConfig,
    QueryResult,
    ResultLimits,
    SandboxPool,
    Workdir,
    execute,
)

log = logging.getLogger(__name__)

KILL_GRACE_SECONDS = 5.0
START_TIMEOUT_SECONDS = 60.0
_ERRORS: dict[str, type[QueryError]] = {
    cls.__name__: cls for cls in (QueryError, QueryFailed, QueryTimeout, TooLarge, AccessDenied)
}


class EngineCrashed(QueryError):
    """The worker process running the query died (a signal other than the CPU limit)."""

    code = "engine_crashed"


@dataclass(frozen=True)
class WorkerLimits:
    """OS limits of each worker process; ``0`` leaves a limit as inherited."""

    address_space_bytes: int
    cpu_seconds: int
    stack_bytes: int


@dataclass(frozen=True)
class _Job:
    sql: str
    relations: tuple[Relation, ...]
    config: EngineConfig
    limits: ResultLimits
    workdir: Workdir


# --- the worker process ------------------------------------------------------------------


def _apply_limits(limits: WorkerLimits) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if limits.address_space_bytes:
        _lower(resource.RLIMIT_AS, limits.address_space_bytes)
    if limits.stack_bytes:
        _lower(resource.RLIMIT_STACK, limits.stack_bytes)


def _lower(which: int, value: int) -> None:
    """Set the soft limit to ``value`` (capped by the hard limit; the hard one is kept)."""
    _soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, hard))


def _arm_cpu(seconds: int) -> None:
    """Allow ``seconds`` more CPU time (all threads) from now: RLIMIT_CPU counts the whole
    life of the process, so a long-lived worker re-arms it before each query."""
    if not seconds:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = used + seconds
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def serve_worker(conn: Connection, config: EngineConfig, limits: WorkerLimits) -> None:
    """Worker process main: apply ``limits``, then answer jobs from ``conn`` until EOF/None.

    Replies ``("ok", QueryResult)`` or ``("error", class name, code, message)``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops workers, not Ctrl-C
    _apply_limits(limits)
    sandboxes = SandboxPool(config, spare=1)
    sandboxes.start()
    conn.send(("ready", os.getpid()))
    try:
        while True:
            try:
                job = conn.recv()
            except EOFError:
                return
            if job is None:
                return
            conn.send(_run(job, sandboxes, limits))
    finally:
        sandboxes.stop()


def _run(job: _Job, sandboxes: SandboxPool, limits: WorkerLimits) -> tuple[Any, ...]:
    _arm_cpu(limits.cpu_seconds)
    try:
        result = execute(job.sql, job.relations, job.config, job.limits, job.workdir, sandboxes)
    except QueryError as exc:
        return ("error", type(exc).__name__, exc.code, exc.message)
    except MemoryError:
        return ("error", "TooLarge", "memory_limit", "query exceeded the memory limit")
    except Exception:  # a process boundary: the parent gets a clear error, the log the detail
        log.exception("query worker failed")
        return ("error", "QueryFailed", "execution_failed", "query execution failed")
    return ("ok", result)


# --- the parent side ---------------------------------------------------------------------


@dataclass
class _Worker:
    process: Any  # multiprocessing's Process of the forkserver context
    conn: Connection
    pid: int


class EngineWorkers:
    """A fixed-size pool of engine worker processes. Thread-safe; call ``start()`` first."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        size: int,
        limits: WorkerLimits,
        kill_grace_seconds: float = KILL_GRACE_SECONDS,
    ) -> None:
        if size < 1:
            raise ValueError("EngineWorkers needs at least one worker")
        # the scoper (boto clients) stays in the parent: jobs carry scoped credentials instead
        self.config = dataclasses.replace(config, s3_scoper=None)
        self._scoper = config.s3_scoper
        self.size = size
        self.limits = limits
        self.kill_grace_seconds = kill_grace_seconds
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(["trace_core.query.workers"])
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._all: dict[int, _Worker] = {}
        self._closed = threading.Event()
        self.replaced = 0

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start every worker and wait until each is ready. Raises ``QueryError``."""
        self._closed.clear()
        for _ in range(self.size):
            self._idle.put(self._spawn())

    def stop(self) -> None:
        self._closed.set()
        with self._lock:
            workers = list(self._all.values())
            self._all.clear()
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        deadline = time.monotonic() + 5
        for worker in workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.conn.close()
        while not self._idle.empty():
            self._idle.get_nowait()

    def pids(self) -> list[int]:
        """Process ids of the live workers (for operators and tests)."""
        with self._lock:
            return sorted(self._all)

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=serve_worker,
            args=(child, self.config, self.limits),
            name="trace-query-engine",
            daemon=True,
        )
        process.start()
        child.close()
        if not parent.poll(START_TIMEOUT_SECONDS):
            process.kill()
            raise QueryError("a query engine worker did not start", code="engine_unavailable")
        try:
            _ready, pid = parent.recv()
        except EOFError as exc:
            raise QueryError(
                f"a query engine worker died at start (exit {process.exitcode})",
                code="engine_unavailable",
            ) from exc
        worker = _Worker(process, parent, pid)
        with self._lock:
            self._all[pid] = worker
        return worker

    def _retire(self, worker: _Worker) -> None:
        """Kill ``worker`` (if still alive) and start its replacement in the background."""
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5)
        worker.conn.close()
        with self._lock:
            self._all.pop(worker.pid, None)
        if self._closed.is_set():
            return
        threading.Thread(target=self._replace, name="query-engine-respawn", daemon=True).start()

    def _replace(self) -> None:
        try:
            fresh = self._spawn()
        except QueryError:
            log.exception("could not replace a query engine worker")
            return
        if self._closed.is_set():
            fresh.conn.send(None)
            fresh.process.join(timeout=5)
            return
        self.replaced += 1
        self._idle.put(fresh)

    # --- running -----------------------------------------------------------------------

    def execute(
        self,
        sql: str,
        relations: Sequence[Relation],
        limits: ResultLimits,
        workdir: Workdir,
    ) -> QueryResult:
        """Run already-gated SQL in a worker; same errors as ``engine.execute`` plus
        ``QueryTimeout`` (code ``cpu_limit``) and ``EngineCrashed`` when the worker dies, and
        ``QueryError(code='engine_busy')`` when no worker frees up within the time limit."""
        job = _Job(sql, tuple(relations), self._job_config(relations), limits, workdir)
        worker = self._take()
        try:
            worker.conn.send(job)
            reply = self._await(worker)
        except BaseException:
            self._retire(worker)
            raise
        self._idle.put(worker)
        if reply[0] == "ok":
            result: QueryResult = reply[1]
            return result
        _kind, name, code, message = reply
        raise _ERRORS.get(name, QueryFailed)(message, code=code)

    def _job_config(self, relations: Sequence[Relation]) -> EngineConfig:
        if self._scoper is None:
            return self.config
        s3_files = [uri for rel in relations for uri in rel.all_files if uri.startswith("s3://")]
        if not s3_files:
            return self.config
        return dataclasses.replace(self.config, s3=self._scoper(s3_files))

    def _take(self) -> _Worker:
        try:
            return self._idle.get(timeout=self.config.timeout_seconds)
        except queue.Empty:
            raise QueryError(
                "every query engine is busy; try again shortly", code="engine_busy"
            ) from None

    def _await(self, worker: _Worker) -> tuple[Any, ...]:
        """The worker's reply; raises a ``QueryError`` if it dies or overruns the deadline."""
        deadline = self.config.timeout_seconds + self.kill_grace_seconds
        ready = multiprocessing.connection.wait([worker.conn, worker.process.sentinel], deadline)
        if worker.conn in ready:
            try:
                reply: tuple[Any, ...] = worker.conn.recv()
                return reply
            except (EOFError, OSError):
                pass  # died while answering: classified below
        if not ready:
            log.warning("query engine worker overran its deadline; killed", extra=_pid(worker))
            raise QueryTimeout(
                f"query exceeded {self.config.timeout_seconds:g} s and its engine did not stop;"
                " the engine process was replaced",
                code="query_timeout",
            )
        worker.process.join(timeout=5)
        raise self._death(worker)

    def _death(self, worker: _Worker) -> QueryError:
        code = worker.process.exitcode
        signum = -code if code is not None and code < 0 else None
        name = signal.Signals(signum).name if signum else f"exit {code}"
        log.warning("query engine worker died (%s)", name, extra=_pid(worker))
        if signum == signal.SIGXCPU:
            return QueryTimeout(
                f"query exceeded its CPU time limit of {self.limits.cpu_seconds} s",
                code="cpu_limit",
            )
        return EngineCrashed(
            f"the query engine process died running this query ({name}), for example from"
            " recursion too deep for its stack; other queries were not affected"
        )


def _pid(worker: _Worker) -> dict[str, Any]:
    return {"worker_pid": worker.pid}
