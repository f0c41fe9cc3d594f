"""The Query Service pipeline (``QueryService``): sandboxed SQL over committed datasets.

The HTTP app (``query.app``) and the embedded path (``query.client.query_embedded``) both
call it. Over HTTP, ``POST /v1/query`` (bearer user token) and ``POST /v1/task-query``
(bearer task capability token) take ``{"sql", "datasets"?, "max_rows"?, "job"?}`` and answer
``{"columns", "rows", "row_count", "truncated", "export", "query_id"}``. Errors are
``{"error": {"code", "message"}}``: 400 rejected or failing SQL, 401 bad token, 403 grant
missing or stale task attempt, 404 unknown job, 409 fake data
refused (TRACE_QUERY_ALLOW_FAKE), 408 timeout or CPU limit, 413 too large, 422
bad manifest, 500 engine crashed (its worker process died; the service keeps serving), 503
storage unavailable or every engine busy.

Order of checks: token -> (task attempt current in state) -> grants in the registry -> SQL
gate -> manifests -> sandboxed engine -> export. Every query that got past the grants is
audited in ``data.query_audit`` whatever its outcome; refused tokens and grants are not.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trace_core.db.connection import Databases, session_options, system_session
from trace_core.db.errors import db_errors
from trace_core.db.queries import q
from trace_core.errors import (
    AccessDenied,
    Forbidden,
    ManifestInvalid,
    NotFound,
    QueryError,
    QueryFailed,
    QueryTimeout,
    RetryableError,
    SqlRejected,
    StorageError,
    TokenInvalid,
    TooLarge,
    TraceError,
    Unauthenticated,
)
from trace_core.query.attach import (
    HOT_TABLES,
    HotSourceResolver,
    ManifestCache,
    Relation,
    Versions,
    attach,
    audit_datasets,
    data_hot_sources,
    followed_chains,
    granted_relations,
    refuse_fake,
    registered_relations,
    task_versions,
)
from trace_core.query.audit import (
    AuditRecord,
    Outcome,
    write_audit,
    write_finished,
    write_started,
)
from trace_core.query.engine import QueryResult, ResultLimits, result_table
from trace_core.query.export import export_result, json_rows
from trace_core.query.gate import check_limits, sql_fingerprint, validate_sql_cached
from trace_core.query.registry_cache import Entry, RegistryCache, registry_generation
from trace_core.query.sandbox import EngineConfig, S3Access, Workdir
from trace_core.query.tokens import (
    UserClaims,
    VerifiedTokens,
    verify_task_token,
    verify_user_token,
)
from trace_core.query.warm import Sandboxes
from trace_core.query.workers import EngineWorkers, WorkerLimits
from trace_core.settings import Settings
from trace_core.storage.base import ObjectStore
from trace_core.tenancy import Principal, authenticate_key, tenant_scope
from trace_core.tenancy.keys import KEY_PREFIX

log = logging.getLogger(__name__)


_STATUS: list[tuple[type[Exception], int]] = [
    (TokenInvalid, 401),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (AccessDenied, 403),
    (QueryTimeout, 408),
    (TooLarge, 413),
    (ManifestInvalid, 422),
    (SqlRejected, 400),
    (QueryFailed, 400),
    (StorageError, 503),
]
_CODE_STATUS = {
    "sql_too_large": 413,
    "job_not_found": 404,
    "fake_data": 409,
    "storage_unavailable": 503,
    "execution_failed": 500,
    "engine_crashed": 500,
    "engine_busy": 503,
    "engine_unavailable": 503,
}


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sql: str
    datasets: list[str] | None = None
    max_rows: int | None = Field(None, ge=1)
    job: str | None = None


def status_of(exc: TraceError) -> int:
    """HTTP status of a refused or failed query: a ``QueryError`` is the client's (4xx) unless
    its code says otherwise; any other Trace error is the service's (503 retryable, else 500)."""
    if exc.code in _CODE_STATUS:
        return _CODE_STATUS[exc.code]
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    if isinstance(exc, QueryError):
        return 400
    return 503 if isinstance(exc, RetryableError) else 500


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def client_error(exc: TraceError) -> QueryError:
    """The error a client of the service sees for ``exc``: its code, its HTTP status in
    ``fields['status']`` and, for anything but a ``QueryError``, no detail (HTTP's body and
    the ``QueryError`` that ``query_http`` raises from it)."""
    told = (QueryError, Unauthenticated, Forbidden, NotFound)
    message = exc.message if isinstance(exc, told) else "service unavailable"
    return QueryError(message, code=exc.code, status=status_of(exc))


@dataclass
class _Run:
    """What one query did, for the audit."""

    query_id: uuid.UUID
    sql_sha256: str
    relations: list[Relation] = field(default_factory=list)
    executed: bool = False
    rows: int | None = None
    bytes: int | None = None
    export_key: str | None = None
    error_code: str | None = None
    warm: bool = False  # the engine ran it in a warm sandbox
    started_audit: Future[None] | None = None  # the durable 'started' row, being written
    reran: bool = False  # the registry moved under its first run (see _Check)


@dataclass(frozen=True)
class _Check:
    """A user query resolved from the registry cache before the org's generation was read:
    the read runs on a thread while the query does, and the query answers only if it shows
    the generation the entry was read at (else it runs again, resolved afresh)."""

    generation: int
    current: Future[int | None]

    def holds(self) -> bool:
        """Whether the entry was current when read (waits for the read; raises its error)."""
        return self.current.result() == self.generation


class _RegistryMoved(Exception):
    """The registry changed under a query run from the cache: run it again."""


class Phases:
    """Wall-clock milliseconds per pipeline phase of one query (for the log line and
    ``QueryService.observer``): token, registry, gate, attach, engine (of which the worker
    reports sandbox and duckdb), render, audit."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._mark = time.perf_counter()

    def lap(self, name: str) -> None:
        """Bill the time since the previous lap to ``name``."""
        now = time.perf_counter()
        self.ms[name] = self.ms.get(name, 0.0) + (now - self._mark) * 1000
        self._mark = now

    def add(self, timings: dict[str, float]) -> None:
        for name, ms in timings.items():
            self.ms[name] = self.ms.get(name, 0.0) + ms


@dataclass
class _Caller:
    org_id: uuid.UUID
    versions: Versions
    user: UserClaims | None = None
    task_id: uuid.UUID | None = None
    attempt: int | None = None
    hot_chains: list[int] = field(default_factory=list)
    principal: Principal | None = None  # an API key's caller


class QueryService:
    """The request pipeline, independent of HTTP. Call ``open()`` before use."""

    def __init__(
        self,
        settings: Settings,
        dbs: Databases,
        store: ObjectStore,
        *,
        hot_sources: HotSourceResolver | Literal["data"] | None = "data",
        gate: bool = True,
        row_security: bool = True,
    ) -> None:
        self.settings = settings
        self.store = store
        self.gate = gate
        # False only to measure what tenant scoping costs (benchmarks/bench_query.py): grants
        # are then resolved as the connecting user, filtered by org in code alone
        self.row_security = row_security
        # called with each query's Phases.ms after its audit (benchmarks, profiling)
        self.observer: Callable[[dict[str, float]], None] | None = None
        # bearer tokens this service verified (each query presents its caller's again)
        self._verified = VerifiedTokens()
        # sessions are the system's (trace_system); each tenant read takes the caller's org
        # and trace_tenant for its transaction (tenant_scope)
        state_kwargs: dict[str, Any] = {
            "autocommit": True,
            **session_options(dbs.state_url, **system_session(settings)),
        }
        self.state = ConnectionPool(
            dbs.state_url, min_size=1, max_size=8, open=False, kwargs=state_kwargs
        )
        # the audit is this pool's only write (see Settings.query_audit_durable)
        data_kwargs: dict[str, Any] = {
            "autocommit": True,
            **session_options(dbs.data_url, **system_session(settings)),
        }
        given = data_kwargs.get("options", "")
        async_kwargs = {**data_kwargs, "options": f"{given} -c synchronous_commit=off".strip()}
        durable = settings.query_audit_durable
        self.data = ConnectionPool(
            dbs.data_url,
            min_size=1,
            max_size=8,
            open=False,
            kwargs=data_kwargs if durable else async_kwargs,
        )
        # durable: an executed query's audit row is written as 'started' (durable commit) on
        # a thread while the engine runs, and its outcome afterwards on this pool
        # (asynchronous commit): the answer never precedes a durable row, and the query no
        # longer waits for a WAL flush of its own (docs/benchmarks.md, issue 25)
        # the outcome is written off the caller's path: the answer does not wait for it
        self._outcomes: ConnectionPool[Any] | None = None
        self._auditor: ThreadPoolExecutor | None = None
        self._finisher: ThreadPoolExecutor | None = None  # outcomes, never ahead of 'started'
        self._pending: set[Future[None]] = set()  # outcome writes not yet landed
        self._pending_lock = threading.Lock()
        if durable:
            self._outcomes = ConnectionPool(
                dbs.data_url, min_size=1, max_size=8, open=False, kwargs=async_kwargs
            )
        # "data": the follower's hot tables, including chains the org follows that have no
        # cold version yet (resolved per request, see _hot_for)
        self._hot_url = dbs.data_url if hot_sources == "data" else None
        self.hot = (
            data_hot_sources(self.data, dbs.data_url) if hot_sources == "data" else hot_sources
        )
        self.cache = ManifestCache()
        self.registry = RegistryCache()
        self._checker: ThreadPoolExecutor | None = None  # registry generation reads (_Check)
        self.reruns = 0  # queries run again because the registry moved under them
        s3 = (
            S3Access.from_settings(settings)
            if str(getattr(store, "url", "")).startswith("s3://")
            else None
        )
        scoper = None
        if s3 is not None and settings.query_s3_role_arn:
            from trace_core.query.s3scope import ScopedCredentials

            scoper = ScopedCredentials(settings, s3).for_files
        self.engine = EngineConfig.from_settings(settings, s3, scoper)
        # DuckDB runs in worker processes (a crash or hang costs one query), or in process
        # with query_workers=0 (no isolation; kept to measure what isolation costs)
        self.workers: EngineWorkers | None = None
        self.sandboxes: Sandboxes | None = None
        if settings.query_workers:
            self.workers = EngineWorkers(
                self.engine,
                size=settings.query_workers,
                limits=WorkerLimits(
                    address_space_bytes=settings.query_worker_address_space_bytes,
                    cpu_seconds=settings.query_cpu_seconds,
                    stack_bytes=settings.query_worker_stack_bytes,
                    warm_sandboxes=settings.query_warm_sandboxes,
                ),
            )
        else:
            self.sandboxes = Sandboxes(
                self.engine, spare=2, warm_capacity=settings.query_warm_sandboxes
            )

    def open(self) -> None:
        self.state.open(wait=True)
        self.data.open(wait=True)
        if self._outcomes is not None:
            self._outcomes.open(wait=True)
            self._auditor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="query-audit")
            self._finisher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="query-outcome")
        if self.workers is not None:
            self.workers.start()
        if self.sandboxes is not None:
            self.sandboxes.start()
        self._checker = ThreadPoolExecutor(max_workers=4, thread_name_prefix="query-registry")

    def close(self) -> None:
        """Stop the engines and wait for every outcome audit write still on its way."""
        if self.workers is not None:
            self.workers.stop()
        if self.sandboxes is not None:
            self.sandboxes.stop()
        for executor in (self._auditor, self._finisher, self._checker):
            if executor is not None:
                executor.shutdown(wait=True)
        self._auditor = self._finisher = self._checker = None
        if self._outcomes is not None:
            self._outcomes.close()
        self.state.close()
        self.data.close()

    def settle_audit(self, timeout: float | None = None) -> bool:
        """Wait until the outcome audit rows of the queries answered so far have landed (or
        failed, which is logged); False if ``timeout`` ran out first."""
        with self._pending_lock:
            pending = list(self._pending)
        return not concurrent.futures.wait(pending, timeout=timeout).not_done

    def healthy(self) -> bool:
        with self.state.connection(timeout=5) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    # --- pipeline --------------------------------------------------------------------

    def handle(
        self, kind: Literal["user", "task"], authorization: str | None, body: bytes
    ) -> dict[str, Any]:
        """Answer one HTTP request or raise a ``TraceError`` (see ``status_of``)."""
        started, phases = time.monotonic(), Phases()
        caller = self._caller(kind, _bearer(authorization))
        request = _parse(body)
        phases.lap("token")
        return self._respond(caller, request, started, phases)

    def query(
        self, kind: Literal["user", "task"], token: str, request: QueryRequest
    ) -> dict[str, Any]:
        """Answer one request without HTTP (the embedded path of ``trace-lite query``): the
        same token check, grants, gate, sandbox, limits and audit as ``handle``. Raises a
        ``TraceError`` (see ``status_of``)."""
        started, phases = time.monotonic(), Phases()
        caller = self._caller(kind, token)
        phases.lap("token")
        return self._respond(caller, request, started, phases)

    def query_as(self, principal: Principal, request: QueryRequest) -> dict[str, Any]:
        """``query`` for the caller of an API key the HTTP API has already authenticated
        (``trace_core.api.query``): the key is not looked up a second time."""
        started, phases = time.monotonic(), Phases()
        caller = self._principal(principal)
        phases.lap("token")
        return self._respond(caller, request, started, phases)

    def query_table(
        self, kind: Literal["user", "task"], token: str, request: QueryRequest
    ) -> pa.Table:
        """``query`` answering the whole result as one Arrow table (never truncated by the
        inline caps, never exported): how a transform's UDF reads its inputs. Same checks,
        sandbox and audit; raises as ``query`` does."""
        started, phases = time.monotonic(), Phases()
        caller = self._caller(kind, token)
        phases.lap("token")
        response = self._respond(caller, request, started, phases, as_table=True)
        table: pa.Table = response["table"]
        return table

    def _caller(self, kind: Literal["user", "task"], token: str) -> _Caller:
        """A user query's bearer is a user token or an API key (``trk_...``)."""
        if kind == "task":
            return self._task(token)
        return self._key(token) if token.startswith(KEY_PREFIX) else self._user(token)

    def _key(self, secret: str) -> _Caller:
        """An API key's caller: every dataset of its org (any role may read); refused keys
        are audited by ``authenticate_key``."""
        with self.state.connection() as conn:
            who = authenticate_key(conn, secret)
        return self._principal(who)

    @staticmethod
    def _principal(who: Principal) -> _Caller:
        claims = UserClaims(sub=who.actor, org_id=who.org_id, datasets="all", expires_at=0)
        return _Caller(who.org_id, {}, user=claims, principal=who)

    def _respond(
        self,
        caller: _Caller,
        request: QueryRequest,
        started: float,
        phases: Phases,
        *,
        as_table: bool = False,
    ) -> dict[str, Any]:
        check = self._resolve(caller, request, speculate=True)
        phases.lap("registry")
        run = _Run(uuid.uuid4(), sql_fingerprint(request.sql))
        try:
            try:
                response = self._run(caller, request, run, phases, as_table=as_table, check=check)
            except Exception:
                if check is None or check.holds():
                    raise
                # its answer (or error) came from a registry entry that no longer held: run
                # again on what holds now, as the same query (one audit row)
                self.reruns += 1
                run.reran = True
                log.info("registry moved under a query; running it again",
                         extra={"query_id": str(run.query_id)})  # fmt: skip
                self._resolve(caller, request)
                phases.lap("registry")
                response = self._run(caller, request, run, phases, as_table=as_table)
        except BaseException as exc:
            run.error_code = exc.code if isinstance(exc, TraceError) else "internal"
            phases.lap("failed")
            self._finish(caller, run, started, phases)
            raise
        self._finish(caller, run, started, phases)
        return response

    def _run(
        self,
        caller: _Caller,
        request: QueryRequest,
        run: _Run,
        phases: Phases,
        *,
        as_table: bool = False,
        check: _Check | None = None,
    ) -> dict[str, Any]:
        caps = {
            "max_bytes": self.settings.query_max_sql_bytes,
            "max_depth": self.settings.query_max_nesting_depth,
        }
        if self.gate:
            relations = validate_sql_cached(request.sql, caller.versions, **caps).relations
        else:
            check_limits(request.sql, **caps)
            relations = frozenset(caller.versions)
        refuse_fake(caller.versions, relations, allow=self.settings.query_allow_fake)
        phases.lap("gate")
        run.relations = attach(
            self.store,
            caller.versions,
            relations,
            max_manifest_bytes=self.settings.query_manifest_max_bytes,
            max_files=self.settings.query_manifest_max_files,
            cache=self.cache,
            hot=self._hot_for(caller),
        )
        phases.lap("attach")
        if self._auditor is not None and run.started_audit is None:
            run.started_audit = self._auditor.submit(
                self._audit, self._record(caller, run, "ok", 0), started=True
            )
        limits = ResultLimits(
            self.settings.query_inline_max_rows,
            self.settings.query_inline_max_bytes,
            request.max_rows,
        )
        workdir = Workdir(self.engine.work_root)
        try:
            run.executed = True
            tenant = str(caller.org_id)
            if self.workers is not None:
                try:
                    result = self.workers.execute(
                        request.sql,
                        run.relations,
                        limits,
                        workdir,
                        tenant,
                        gated=self.gate,
                        json_rows=not as_table,
                    )
                except QueryError as exc:
                    run.warm = bool(exc.fields.get("warm"))
                    raise
            else:
                assert self.sandboxes is not None
                lease = self.sandboxes.take(tenant, run.relations)
                run.warm = lease.warm is not None
                ok = False
                try:
                    result = self.sandboxes.execute(lease, request.sql, limits, workdir)
                    ok = True
                finally:
                    self.sandboxes.give_back(lease, ok, gated=self.gate, later=True)
            run.rows, run.bytes, run.warm = result.row_count, result.bytes, result.warm
            phases.lap("engine")
            phases.add(result.timings)
            if check is not None:
                if not check.holds():
                    raise _RegistryMoved
                phases.lap("registry")
            if as_table:
                return {"table": result_table(result)}
            export = None
            if result.spool is not None:
                export = export_result(
                    self.store,
                    run.query_id,
                    result.spool,
                    result.row_count,
                    presign_seconds=self.settings.query_presign_seconds,
                    org_id=caller.org_id,
                )
                run.export_key = export.key
        finally:
            workdir.cleanup()
        response = {
            "columns": result.columns,
            "rows": [] if export else _rendered(result),
            "row_count": result.row_count,
            "truncated": result.truncated,
            "export": export.as_json() if export else None,
            "query_id": str(run.query_id),
        }
        phases.lap("render")
        return response

    def _hot_for(self, caller: _Caller) -> HotSourceResolver | None:
        """Hot rows serve user queries only (a task reads exactly its pinned versions), read
        as ``trace_tenant`` with the caller's org: row-level security keeps other orgs' hot
        rows out even where chains overlap."""
        if caller.user is None:
            return None
        if self._hot_url is not None:
            return data_hot_sources(
                self.data,
                self._hot_url,
                caller.hot_chains,
                org_id=caller.org_id,
                as_tenant=self.row_security,
            )
        return self.hot

    def _finish(self, caller: _Caller, run: _Run, started: float, phases: Phases) -> None:
        outcome: Outcome = "ok"
        if run.error_code is not None:
            outcome = "failed" if run.executed else "rejected"
        duration_ms = int((time.monotonic() - started) * 1000)
        record = self._record(caller, run, outcome, duration_ms)
        if run.started_audit is None:
            self._audit(record)
        elif run.reran:
            # its 'started' row names what the first run read: the row of what answered is
            # durable before the answer
            run.started_audit.result()
            with self.data.connection() as conn, db_errors("query audit"):
                write_finished(conn, record)
        else:
            run.started_audit.result()  # its failure fails the query, as a failed insert does
            self._finish_later(record)
        phases.lap("audit")
        if self.observer is not None:
            self.observer(phases.ms)
        log.info(
            "query %s",
            outcome,
            extra={
                "query_id": str(run.query_id),
                "sql_sha256": run.sql_sha256,
                "outcome": outcome,
                "error_code": run.error_code,
                "rows": run.rows,
                "exported": run.export_key is not None,
                "sandbox": "warm" if run.warm else "fresh",
                "duration_ms": duration_ms,
                "phases_ms": {name: round(ms, 2) for name, ms in phases.ms.items()},
            },
        )

    @staticmethod
    def _record(caller: _Caller, run: _Run, outcome: Outcome, duration_ms: int) -> AuditRecord:
        return AuditRecord(
            query_id=run.query_id,
            org_id=caller.org_id,
            sql_sha256=run.sql_sha256,
            duration_ms=duration_ms,
            outcome=outcome,
            user_sub=caller.user.sub if caller.user else None,
            task_id=caller.task_id,
            attempt=caller.attempt,
            datasets=audit_datasets(run.relations),
            rows=run.rows,
            bytes=run.bytes,
            error_code=run.error_code,
            export_key=run.export_key,
        )

    def _user(self, token: str) -> _Caller:
        claims = verify_user_token(self.settings, token, self._verified)
        return _Caller(claims.org_id, {}, user=claims)

    def _task(self, token: str) -> _Caller:
        claims = verify_task_token(self.settings, token, self._verified)
        # as the token's org: a task or version of another org is simply not there
        with self.state.connection() as conn, self._scope(conn, claims.org_id):
            row = conn.execute(q("query", "task_attempt"), {"task_id": claims.task_id}).fetchone()
            if row is None or row[0] != "running" or row[1] != claims.attempt:
                raise AccessDenied("the task attempt is not current", code="stale_attempt")
            versions = task_versions(conn, claims)
        return _Caller(claims.org_id, versions, task_id=claims.task_id, attempt=claims.attempt)

    def _resolve(
        self, caller: _Caller, request: QueryRequest, *, speculate: bool = False
    ) -> _Check | None:
        """Set the relations the request may read (403 for names outside the grant).
        ``speculate``: a user query may take the org's cached resolution before its
        generation is read; the returned ``_Check`` must hold before the query answers."""
        if caller.user is not None:
            check = None
            held = self.registry.latest(self._registry_key(caller.org_id, request.job))
            if speculate and held is not None and self._checker is not None:
                generation, entry = held
                check = _Check(generation, self._checker.submit(self._generation, caller.org_id))
            else:
                with self.state.connection() as conn:
                    entry = self._registered(conn, caller.org_id, request.job)
            try:
                caller.versions = self._granted(caller, request, entry)
            except AccessDenied:
                if check is None:
                    raise
                return self._resolve(caller, request)  # refused by an entry that may be stale
            return check
        if request.job is not None:
            raise QueryError("job is not valid for task queries", code="bad_request")
        if request.datasets is not None:
            missing = set(request.datasets) - set(caller.versions)
            if missing:
                raise AccessDenied(f"dataset {sorted(missing)[0]!r} is not granted")
            caller.versions = {name: caller.versions[name] for name in request.datasets}
        return None

    @staticmethod
    def _granted(caller: _Caller, request: QueryRequest, entry: Entry) -> Versions:
        assert caller.user is not None
        chains, registered = entry
        caller.hot_chains = list(chains)
        return granted_relations(
            registered,
            caller.user,
            requested=request.datasets,
            hot_relations=HOT_TABLES if chains else (),
        )

    def _registry_key(
        self, org_id: uuid.UUID, job: str | None
    ) -> tuple[uuid.UUID, str | None, bool]:
        return (org_id, job, self._hot_url is not None)

    def _generation(self, org_id: uuid.UUID) -> int | None:
        with self.state.connection() as conn:
            return registry_generation(conn, org_id)

    def _registered(self, conn: Any, org_id: uuid.UUID, job: str | None) -> Entry:
        """The org's (or job's) relations before grants, and the chains it follows into the
        hot tables: from ``self.registry`` while the org's registry generation holds, else
        read as the org (``trace_tenant``) and remembered."""
        generation = registry_generation(conn, org_id)
        key = self._registry_key(org_id, job)
        if generation is not None:
            hit = self.registry.get(key, generation)
            if hit is not None:
                return hit
        with self._scope(conn, org_id):
            chains = tuple(followed_chains(conn, org_id, job)) if key[2] else ()
            entry = (chains, registered_relations(conn, org_id, job))
        if generation is not None:
            self.registry.put(key, generation, entry)
        return entry

    def _scope(self, conn: Any, org_id: uuid.UUID) -> AbstractContextManager[Any]:
        """The caller's org for this transaction, as ``trace_tenant`` (row-level security)."""
        if not self.row_security:
            return contextlib.nullcontext()
        return tenant_scope(conn, org_id)

    def _finish_later(self, record: AuditRecord) -> None:
        """Record the outcome of a query whose durable 'started' row is committed, off the
        caller's path: the row already survives a crash, and the outcome's commit is
        asynchronous anyway. If it fails (logged), the row stays 'started', as after a crash
        mid-query."""
        assert self._finisher is not None
        future = self._finisher.submit(self._write_outcome, record)
        with self._pending_lock:
            self._pending.add(future)
        future.add_done_callback(functools.partial(self._outcome_landed, record.query_id))

    def _write_outcome(self, record: AuditRecord) -> None:
        assert self._outcomes is not None
        try:
            with self._outcomes.connection() as conn, db_errors("query audit"):
                write_finished(conn, record)
        except TraceError:
            _outcome_lost(record.query_id)

    def _outcome_landed(self, query_id: uuid.UUID, future: Future[None]) -> None:
        with self._pending_lock:
            self._pending.discard(future)
        if future.exception() is not None:  # not a database error: a bug, still logged
            _outcome_lost(query_id, future.exception())

    def _audit(self, record: AuditRecord, *, started: bool = False) -> None:
        """The system records what a caller did, under the caller's org (given, not taken
        from the session): no tenant scope, one statement (``started``: the row of a query
        about to execute, see ``_outcomes``)."""
        with self.data.connection() as conn, db_errors("query audit"):
            (write_started if started else write_audit)(conn, record)


def _rendered(result: QueryResult) -> list[list[Any]]:
    """The inline rows as JSON values (rendered by the worker, or here)."""
    if result.rows is not None:
        return result.rows
    return json_rows(result.batches, result.columns)


def _outcome_lost(query_id: uuid.UUID, error: BaseException | None = None) -> None:
    log.error(
        "query audit outcome not recorded; its row stays 'started'",
        exc_info=error or True,
        extra={"query_id": str(query_id)},
    )


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise TokenInvalid("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenInvalid("authorization must be 'Bearer <token>'")
    return token.strip()


def _parse(body: bytes) -> QueryRequest:
    try:
        return QueryRequest.model_validate_json(body)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in err["loc"]) or "<body>" for err in exc.errors()})
        raise QueryError(
            f"invalid request (fields: {', '.join(fields)})", code="bad_request"
        ) from exc
