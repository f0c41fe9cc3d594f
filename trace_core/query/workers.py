"""DuckDB in worker processes: a query that crashes or hangs the engine costs only itself.

``EngineWorkers`` keeps ``size`` pre-started worker processes (``python -m
trace_core.query.workers``, talking over a socketpair). Each worker runs one query at a time
on its main thread, in the same sandbox the service uses in process (``query.warm.Sandboxes``:
its org's warm sandbox for exactly those files when one is ready, else a fresh instance; exact
``allowed_paths``, ``enable_external_access=false``, ``lock_configuration`` either way), under
OS limits set once at start:

- ``RLIMIT_AS`` (address space): allocations past it fail, which DuckDB reports as out of
  memory (HTTP 413) instead of growing until the kernel's OOM killer picks a victim;
- ``RLIMIT_STACK``: the query thread's stack; recursion past it kills the worker (SIGSEGV);
- ``RLIMIT_CPU``: re-armed before every query to "CPU used so far + the per-query budget"
  (soft limit, all threads); past it the kernel sends SIGXCPU, which kills the worker;
- ``RLIMIT_CORE`` 0: a crash writes no core file.

The parent waits for the reply or the worker's end of the socket closing, and past the
wall-clock limit plus a grace period (the worker's own watchdog should have interrupted DuckDB
by then) it kills the worker. A dead worker is classified by its signal into a clear
``QueryError`` for that query only and replaced in the background; other queries run in other
workers meanwhile. Jobs go to a worker pickled (trusted direction); replies come back as one
message, a JSON header plus an Arrow IPC stream, never a pickle, so a subverted engine process
cannot make the service unpickle anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import pickle
import queue
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import pyarrow as pa

from trace_core.errors import (
    AccessDenied,
    QueryError,
    QueryFailed,
    QueryTimeout,
    TooLarge,
)
from trace_core.query.engine import QueryResult, ResultLimits
from trace_core.query.export import json_rows
from trace_core.query.relations import Relation
from trace_core.query.sandbox import EngineConfig, Workdir
from trace_core.query.warm import Lease, Sandboxes, warm_key, warm_root

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
    warm_sandboxes: int = 0  # per worker (``query.warm``); 0: a fresh instance per query


@dataclass(frozen=True)
class _Job:
    sql: str
    relations: tuple[Relation, ...]
    config: EngineConfig | None  # None: the worker's own (no per-query S3 credentials)
    limits: ResultLimits
    workdir: Workdir
    tenant: str | None = None  # the caller's org: a warm sandbox serves one org only
    gated: bool = False  # the SQL passed the gate (``WarmSandboxes.give_back``)
    json_rows: bool = False  # answer inline rows rendered as JSON values, not Arrow
    warm_key: str | None = None  # ``warm.warm_key(tenant, relations)``, computed by the parent


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


def serve_worker(conn: Connection) -> None:
    """Worker process main: read ``(EngineConfig, WorkerLimits)``, apply the limits, then
    answer pickled ``_Job``s from ``conn`` until EOF or ``None`` (see ``_encode``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops workers, not Ctrl-C
    config, limits = pickle.loads(conn.recv_bytes())
    _apply_limits(limits)
    sandboxes = Sandboxes(config, spare=1, warm_capacity=limits.warm_sandboxes)
    sandboxes.start()
    conn.send_bytes(json.dumps({"status": "ready", "pid": os.getpid()}).encode())
    try:
        while True:
            try:
                job = pickle.loads(conn.recv_bytes())
            except EOFError:
                return
            if job is None:
                return
            lease = sandboxes.take_keyed(job.warm_key, job.relations)
            ok = False
            try:
                outcome = _run(job, sandboxes, lease, limits)
                ok = not isinstance(outcome, QueryError)
                conn.send_bytes(
                    _encode(outcome, warm=lease.warm is not None, rows_json=job.json_rows)
                )
            finally:
                # only once the reply is out: checking or closing the used sandbox and
                # preparing the next one would otherwise hold the GIL while it is sent
                sandboxes.give_back(lease, ok, gated=job.gated)
    finally:
        sandboxes.stop()


def _run(
    job: _Job, sandboxes: Sandboxes, lease: Lease, limits: WorkerLimits
) -> QueryResult | QueryError:
    _arm_cpu(limits.cpu_seconds)
    try:
        return sandboxes.execute(lease, job.sql, job.limits, job.workdir, job.config)
    except QueryError as exc:
        return exc
    except MemoryError:
        return TooLarge("query exceeded the memory limit", code="memory_limit")
    except Exception:  # a process boundary: the parent gets a clear error, the log the detail
        log.exception("query worker failed")
        return QueryFailed("query execution failed", code="execution_failed")


def _encode(
    outcome: QueryResult | QueryError, *, warm: bool = False, rows_json: bool = False
) -> bytes:
    """A reply as one message (one wake-up of the parent): the JSON header's length (4 bytes,
    big-endian), the header, then the Arrow IPC stream of the inline batches, if any.
    ``rows_json``: inline rows go in the header as JSON values (``export.json_rows``) instead,
    rendered here rather than decoded and rendered on the service's side of the answer."""
    if isinstance(outcome, QueryError):
        error = {
            "status": "error",
            "error": type(outcome).__name__,
            "code": outcome.code,
            "message": outcome.message,
            "warm": warm,
        }
        return _framed(json.dumps(error).encode())
    header: dict[str, Any] = {
        "status": "ok",
        "columns": outcome.columns,
        "row_count": outcome.row_count,
        "bytes": outcome.bytes,
        "truncated": outcome.truncated,
        "spooled": outcome.spool is not None,
        "timings": outcome.timings,
        "warm": warm or outcome.warm,
    }
    if rows_json and outcome.batches:
        header["rows"] = json_rows(outcome.batches, outcome.columns)
    head = _framed(json.dumps(header).encode())
    if not outcome.batches or rows_json:
        return head
    sink = pa.BufferOutputStream()
    sink.write(head)
    with pa.ipc.new_stream(sink, outcome.batches[0].schema) as writer:
        for batch in outcome.batches:
            writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _framed(header: bytes) -> bytes:
    return len(header).to_bytes(4, "big") + header


def _decode(reply: bytes, workdir: Workdir) -> QueryResult:
    """The parent's side of ``_encode``: a result, or raise the error it carries."""
    size = int.from_bytes(reply[:4], "big")
    if len(reply) < 4 or size > len(reply) - 4:
        raise QueryFailed("the query engine sent a malformed reply", code="execution_failed")
    view = memoryview(reply)
    header = json.loads(view[4 : 4 + size].tobytes())
    body = view[4 + size :]
    if header["status"] != "ok":
        cls = _ERRORS.get(str(header["error"]), QueryFailed)
        # ``warm``: where it failed, for the service's log line
        raise cls(str(header["message"]), code=str(header["code"]), warm=bool(header.get("warm")))
    batches = list(pa.ipc.open_stream(pa.py_buffer(body))) if len(body) else []
    rows = header.get("rows")
    return QueryResult(
        columns=[{"name": str(c["name"]), "type": str(c["type"])} for c in header["columns"]],
        batches=batches,
        row_count=int(header["row_count"]),
        bytes=int(header["bytes"]),
        truncated=bool(header["truncated"]),
        spool=workdir.spool if header["spooled"] else None,
        timings={str(k): float(v) for k, v in header.get("timings", {}).items()},
        warm=bool(header.get("warm")),
        rows=rows if isinstance(rows, list) else None,
    )


# --- the parent side ---------------------------------------------------------------------


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    conn: Connection

    @property
    def pid(self) -> int:
        return self.process.pid


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
        # LIFO: the most recently used worker (warm caches) takes the next query
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._all: dict[int, _Worker] = {}
        self._closed = threading.Event()
        self.replaced = 0

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start every worker (in parallel) and wait until each is ready. Raises
        ``QueryError(code='engine_unavailable')``."""
        self._closed.clear()
        launched = [self._launch() for _ in range(self.size)]
        for worker in launched:
            self._idle.put(self._ready(worker))

    def stop(self) -> None:
        self._closed.set()
        with self._lock:
            workers = list(self._all.values())
            self._all.clear()
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.conn.send_bytes(pickle.dumps(None))
        deadline = time.monotonic() + 5
        for worker in workers:
            try:
                worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait(timeout=5)
            worker.conn.close()
        while not self._idle.empty():
            self._idle.get_nowait()

    def pids(self) -> list[int]:
        """Process ids of the live workers (for operators and tests)."""
        with self._lock:
            return sorted(self._all)

    def _launch(self) -> _Worker:
        ours, theirs = socket.socketpair()
        with theirs:
            process = subprocess.Popen(
                [sys.executable, "-m", "trace_core.query.workers", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        conn = Connection(ours.detach())
        conn.send_bytes(pickle.dumps((self.config, self.limits)))
        worker = _Worker(process, conn)
        with self._lock:
            self._all[worker.pid] = worker
        return worker

    def _ready(self, worker: _Worker) -> _Worker:
        try:
            if not worker.conn.poll(START_TIMEOUT_SECONDS):
                raise EOFError
            json.loads(worker.conn.recv_bytes())
        except (EOFError, OSError, ValueError) as exc:
            self._retire(worker, replace=False)
            raise QueryError(
                f"a query engine worker did not start (exit {worker.process.returncode})",
                code="engine_unavailable",
            ) from exc
        return worker

    def _retire(self, worker: _Worker, *, replace: bool = True) -> None:
        """Kill ``worker`` (if still alive) and start its replacement in the background."""
        if worker.process.poll() is None:
            worker.process.kill()
        worker.process.wait(timeout=5)
        worker.conn.close()
        with self._lock:
            self._all.pop(worker.pid, None)
        for leftover in warm_root(self.config).glob(f"{worker.pid}-*"):  # a killed worker's
            shutil.rmtree(leftover, ignore_errors=True)
        if replace and not self._closed.is_set():
            threading.Thread(target=self._replace, name="query-engine-respawn", daemon=True).start()

    def _replace(self) -> None:
        try:
            fresh = self._ready(self._launch())
        except QueryError:
            log.exception("could not replace a query engine worker")
            return
        if self._closed.is_set():
            self._retire(fresh, replace=False)
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
        tenant: str | None = None,
        *,
        gated: bool = False,
        json_rows: bool = False,
    ) -> QueryResult:
        """Run already-gated SQL in a worker (``tenant``: the caller's org, which may be
        served by a warm sandbox of that org's, ``query.warm``); same errors as ``engine.execute`` plus
        ``QueryTimeout`` (code ``cpu_limit``) and ``EngineCrashed`` when the worker dies, and
        ``QueryError(code='engine_busy')`` when no worker frees up within the time limit.
        ``json_rows``: inline rows come back rendered (``QueryResult.rows``), not as batches."""
        # versions stay here: the engine reads files and hot sources, and the worker then
        # needs no registry (nor Postgres driver) to unpickle the job
        shipped = tuple(dataclasses.replace(rel, versions=()) for rel in relations)
        key = _warm_key(tenant, shipped) if self.limits.warm_sandboxes else None
        job = _Job(
            sql,
            shipped,
            self._job_config(relations),
            limits,
            workdir,
            tenant,
            gated,
            json_rows,
            key,
        )
        payload = pickle.dumps(job)
        worker = self._take()
        try:
            worker.conn.send_bytes(payload)
            reply = self._await(worker)
        except BaseException:
            self._retire(worker)
            raise
        self._idle.put(worker)
        return _decode(reply, workdir)

    def _job_config(self, relations: Sequence[Relation]) -> EngineConfig | None:
        """The job's engine config when it differs from the one each worker started with
        (per-query S3 credentials), else None (less to unpickle on the worker's side)."""
        if self._scoper is None:
            return None
        s3_files = [uri for rel in relations for uri in rel.all_files if uri.startswith("s3://")]
        if not s3_files:
            return None
        return dataclasses.replace(self.config, s3=self._scoper(s3_files))

    def _take(self) -> _Worker:
        try:
            return self._idle.get(timeout=self.config.timeout_seconds)
        except queue.Empty:
            raise QueryError(
                "every query engine is busy; try again shortly", code="engine_busy"
            ) from None

    def _await(self, worker: _Worker) -> bytes:
        """The worker's reply; raises a ``QueryError`` if it dies or overruns the deadline."""
        deadline = self.config.timeout_seconds + self.kill_grace_seconds
        if not worker.conn.poll(deadline):
            log.warning("query engine worker overran its deadline; killed", extra=_pid(worker))
            raise QueryTimeout(
                f"query exceeded {self.config.timeout_seconds:g} s and its engine did not stop;"
                " the engine process was replaced",
                code="query_timeout",
            )
        try:
            return worker.conn.recv_bytes()
        except (EOFError, OSError):
            pass  # the worker's end closed: it died; classified below
        worker.process.wait(timeout=5)
        raise self._death(worker)

    def _death(self, worker: _Worker) -> QueryError:
        code = worker.process.returncode
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


@functools.lru_cache(maxsize=256)
def _warm_key(tenant: str | None, relations: tuple[Relation, ...]) -> str | None:
    """``warm_key``, remembered per (org, exact relations): the same files are queried
    again and again, and the key hashes every file name."""
    return warm_key(tenant, relations)


def _pid(worker: _Worker) -> dict[str, Any]:
    return {"worker_pid": worker.pid}


if __name__ == "__main__":
    serve_worker(Connection(int(sys.argv[1])))
