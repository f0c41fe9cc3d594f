"""Warm sandboxes: one locked DuckDB per (org, exact relations), reused query after query.

A fresh instance per query pays its set-up on every query: binding the views reads every
file's Parquet footer, and a new instance's threads and allocations start cold (~2 ms of
set-up plus scans 10-20% slower than on a warm connection; docs/benchmarks.md). A warm sandbox
is built once per key (``warm_key``: the org and the exact view text, so the same files,
clips and shapes) with the same lock-down as a fresh one (``allowed_paths`` = exactly those
files, ``enable_external_access=false``, ``lock_configuration``), and every query runs in a
new connection to it (``engine.execute_in``):

- its database is a file holding only the views, opened READ_ONLY and then unlinked: user
  SQL can create, replace or drop nothing that outlives its connection, and can attach
  neither an in-memory database nor that file; temp objects, variables, prepared statements
  and session state belong to the query's connection and are closed with it;
- it serves one org and one set of files (the key), so what its caches hold is what every
  query it serves may read anyway; another org or another grant gets another instance;
- one query at a time (checked out exclusively); after each query the gate did not check,
  its attached databases are compared with those it was built with (nothing found a way to
  attach one, but the gate can be switched off), and it is discarded after any error, after
  ``max_uses`` queries or ``idle_seconds`` unused, and the least recently used goes past
  ``capacity``.

Relations with hot rows (copied from Postgres per query) or S3 objects (per-query scoped
credentials) never get one: those queries use a fresh instance, as does every query until
its key's warm sandbox is ready (built on a background thread once a second fresh query of
that key succeeded).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from trace_core.query.engine import QueryResult, ResultLimits, execute_in, execute_on
from trace_core.query.relations import Relation
from trace_core.query.sandbox import (
    EngineConfig,
    SandboxPool,
    Workdir,
    base_config,
    lock_statements,
    view_statements,
)

log = logging.getLogger(__name__)

MAX_USES = 1000
IDLE_SECONDS = 600.0
_SWEEP_SECONDS = 30.0
_SEEN_KEYS = 1024


def warm_key(tenant: str | None, relations: Sequence[Relation]) -> str | None:
    """A warm sandbox's identity: the org and the exact views over exactly these files.
    ``None`` when the query cannot have one (no org given, hot rows, files not local)."""
    if not tenant:
        return None
    files = [uri for rel in relations for uri in rel.all_files]
    if any(rel.hot for rel in relations) or any("://" in uri for uri in files):
        return None
    text = json.dumps([tenant, view_statements(relations, {}, temp=False), sorted(files)])
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class WarmSandbox:
    key: str
    con: duckdb.DuckDBPyConnection
    root: Path
    databases: tuple[str, ...]
    uses: int = 0
    last_used: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        try:
            self.con.close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def warm_root(config: EngineConfig) -> Path:
    """Where warm sandboxes keep their files: ``<pid>-<id>/`` each, so the parent can remove
    a killed worker's (``EngineWorkers``)."""
    return config.work_root / "warm"


def build_warm(key: str, relations: Sequence[Relation], config: EngineConfig) -> WarmSandbox:
    """Write the views into a private database file, open it READ_ONLY and lock it."""
    root = warm_root(config) / f"{os.getpid()}-{uuid.uuid4().hex}"
    root.mkdir(mode=0o700, parents=True)
    path = root / "views.duckdb"
    views = view_statements(relations, {}, temp=False)
    try:
        with duckdb.connect(str(path), config=base_config(config.extension_dir)) as writer:
            writer.execute(";\n".join(views) if views else "SELECT 1")
        con = duckdb.connect(
            str(path),
            read_only=True,
            config={
                **base_config(config.extension_dir),
                "memory_limit": config.memory_limit,
                "threads": config.threads,
                "temp_directory": str(root / "spill"),
                # local files are in the OS page cache already; a copy per instance in
                # DuckDB's buffer pool would only hold memory while the sandbox idles
                "enable_external_file_cache": False,
            },
        )
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    box = WarmSandbox(key, con, root, ())
    try:
        # the open instance keeps reading it; gone from the directory, no query can ATTACH
        # it a second time under another name
        path.unlink()
        files = [uri for rel in relations for uri in rel.all_files]
        con.execute(";\n".join(lock_statements(files)))
        box.databases = _databases(con)
        # the first statement of an instance pays its one-time set-up: pay it here
        con.execute("SELECT 1").fetchall()
    except BaseException:
        box.close()
        raise
    return box


def _databases(con: duckdb.DuckDBPyConnection) -> tuple[str, ...]:
    cursor = con.cursor()
    try:
        rows = cursor.execute(
            "SELECT database_name || ':' || coalesce(path, '') || ':' || readonly"
            " FROM duckdb_databases() ORDER BY 1"
        ).fetchall()
    finally:
        cursor.close()
    return tuple(str(r[0]) for r in rows)


class WarmSandboxes:
    """Warm sandboxes by key, built and closed on a background thread. Thread-safe."""

    def __init__(
        self,
        config: EngineConfig,
        capacity: int,
        *,
        max_uses: int = MAX_USES,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self.config = config
        self.capacity = capacity
        self.max_uses = max_uses
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: collections.OrderedDict[str, WarmSandbox] = collections.OrderedDict()
        self._live: set[str] = set()  # keys with a sandbox: idle, in use or being built
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()  # one miss
        # work for the background thread: a key to build, a sandbox to check, one to close
        self._jobs: queue.Queue[
            tuple[str, tuple[Relation, ...]] | tuple[str, WarmSandbox] | WarmSandbox | None
        ] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.built = 0
        self.discarded = 0

    def start(self) -> None:
        self._stopped = False
        self._thread = threading.Thread(
            target=self._loop, name="duckdb-warm-sandboxes", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            idle = list(self._idle.values())
            self._idle.clear()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        for box in idle:
            box.close()

    def take(self, key: str) -> WarmSandbox | None:
        """The key's idle sandbox, now this caller's alone, or ``None``."""
        with self._lock:
            box = self._idle.pop(key, None)
        if box is not None and time.monotonic() - box.last_used > self.idle_seconds:
            self._discard(box)
            return None
        return box

    def give_back(
        self, box: WarmSandbox, ok: bool, *, gated: bool = False, later: bool = False
    ) -> None:
        """After a query: keep ``box`` for the next one if the query succeeded and the
        sandbox is as it was built, else discard it. ``gated``: the SQL passed the gate (one
        read-only SELECT: it cannot have attached anything), so the check is skipped, as is
        its CPU next to the answer on its way. ``later``: check on the background thread
        (in process, so the answer does not wait; until then the key's next query takes a
        fresh instance)."""
        box.uses += 1
        if later and ok and not gated and self._thread is not None:
            self._jobs.put(("check", box))
            return
        self._check(box, ok, gated)

    def _check(self, box: WarmSandbox, ok: bool, gated: bool = False) -> None:
        keep = ok and box.uses < self.max_uses
        if keep and not gated:
            try:
                keep = _databases(box.con) == box.databases
            except duckdb.Error:
                keep = False
            if not keep:
                log.warning("a warm query sandbox changed; discarded")
        if not keep:
            self._discard(box)
            return
        box.last_used = time.monotonic()
        with self._lock:
            if not self._stopped:
                self._idle[box.key] = box
                self._idle.move_to_end(box.key)
                return
        self._discard(box)

    def prepare(self, key: str, relations: Sequence[Relation]) -> None:
        """Build the key's sandbox in the background unless it has one (or is building),
        from the key's second fresh query on: a one-off query (or a one-query service, such
        as the CLI's) does not pay for a build nobody uses."""
        with self._lock:
            if self._stopped or self.capacity < 1 or key in self._live:
                return
            if key not in self._seen:
                self._seen[key] = None
                while len(self._seen) > _SEEN_KEYS:
                    self._seen.popitem(last=False)
                return
            del self._seen[key]
            self._live.add(key)
        self._jobs.put((key, tuple(relations)))

    def _discard(self, box: WarmSandbox) -> None:
        with self._lock:
            self._live.discard(box.key)
            self.discarded += 1
        if self._thread is None:
            box.close()
        else:
            self._jobs.put(box)  # closed off the request path

    def _loop(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=min(_SWEEP_SECONDS, self.idle_seconds))
            except queue.Empty:
                self._sweep()
                continue
            if job is None:
                return
            if isinstance(job, WarmSandbox):
                job.close()
                continue
            if isinstance(job[1], WarmSandbox):
                self._check(job[1], True)
                continue
            key, relations = job
            try:
                box = build_warm(key, relations, self.config)
            except Exception:
                log.exception("could not build a warm query sandbox")
                with self._lock:
                    self._live.discard(key)
                continue
            self._add(box)
            self._sweep()

    def _add(self, box: WarmSandbox) -> None:
        evicted = []
        with self._lock:
            if self._stopped:
                evicted.append(box)
            else:
                self.built += 1
                self._idle[box.key] = box
                while len(self._live) > self.capacity and self._idle:
                    _, old = self._idle.popitem(last=False)
                    self._live.discard(old.key)
                    evicted.append(old)
        for old in evicted:
            old.close()

    def _sweep(self) -> None:
        """Close sandboxes idle past ``idle_seconds``."""
        now = time.monotonic()
        with self._lock:
            stale = [b for b in self._idle.values() if now - b.last_used > self.idle_seconds]
            for box in stale:
                del self._idle[box.key]
                self._live.discard(box.key)
        for box in stale:
            box.close()


@dataclass
class Lease:
    """Where one query runs: a warm sandbox, or a fresh instance (and its warm key)."""

    relations: tuple[Relation, ...]
    key: str | None
    warm: WarmSandbox | None = None
    fresh: duckdb.DuckDBPyConnection | None = None


class Sandboxes:
    """A query's sandbox: its key's warm sandbox when one is ready, else a fresh instance
    from the pool (``SandboxPool``), after which, if the query succeeded, the key's warm
    sandbox is built for the next one. ``warm_capacity`` 0: fresh instances only."""

    def __init__(self, config: EngineConfig, *, spare: int, warm_capacity: int) -> None:
        self.config = config
        self.fresh = SandboxPool(config, spare=spare)
        self.warm = WarmSandboxes(config, warm_capacity) if warm_capacity > 0 else None

    def start(self) -> None:
        self.fresh.start()
        if self.warm is not None:
            self.warm.start()

    def stop(self) -> None:
        if self.warm is not None:
            self.warm.stop()
        self.fresh.stop()

    def take(self, tenant: str | None, relations: Sequence[Relation]) -> Lease:
        return self.take_keyed(warm_key(tenant, relations), relations)

    def take_keyed(self, key: str | None, relations: Sequence[Relation]) -> Lease:
        """``take`` with ``warm_key(tenant, relations)`` already computed by the caller (the
        service, for its worker: not on the worker's side of the round trip)."""
        key = key if self.warm is not None else None
        lease = Lease(tuple(relations), key)
        if key is not None and self.warm is not None:
            lease.warm = self.warm.take(key)
        if lease.warm is None:
            lease.fresh = self.fresh.take()
        return lease

    def execute(
        self,
        lease: Lease,
        sql: str,
        limits: ResultLimits,
        workdir: Workdir,
        config: EngineConfig | None = None,
    ) -> QueryResult:
        """Run already-gated SQL in the lease's sandbox (``config``: the job's, when it
        carries per-query credentials). Raises as ``engine.execute_on``."""
        config = config or self.config
        if lease.warm is not None:
            result = execute_in(lease.warm.con, sql, config, limits, workdir)
            result.warm = True
            return result
        assert lease.fresh is not None
        return execute_on(lease.fresh, sql, lease.relations, config, limits, workdir)

    def give_back(
        self, lease: Lease, ok: bool, *, gated: bool = False, later: bool = False
    ) -> None:
        """After the query (and its answer, where that can go first; ``later``: where it
        cannot, check a warm sandbox on the background thread; ``gated``: the SQL passed the
        gate, see ``WarmSandboxes.give_back``)."""
        if lease.warm is not None and self.warm is not None:
            self.warm.give_back(lease.warm, ok, gated=gated, later=later)
            return
        if lease.fresh is not None:
            self.fresh.discard(lease.fresh)
        if ok and lease.key is not None and self.warm is not None:
            self.warm.prepare(lease.key, lease.relations)
