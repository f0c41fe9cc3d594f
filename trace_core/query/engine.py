"""The sandboxed DuckDB engine: a fresh in-memory database per query (or a warm, equally
locked one reused per org and exact files, ``query.warm``, which builds on the pieces here).

Trusted code builds everything before untrusted SQL runs:

1. a new in-memory DuckDB (extension autoload/autoinstall off, memory and thread limits, a
   private spill directory);
2. extensions only when needed, loaded offline from the pip wheels (``httpfs`` for S3
   objects, ``postgres_scanner`` for hot rows): installed once per process from
   ``duckdb_extensions`` and signature-checked once, then loaded per query;
3. hot rows (``HotSource``) copied into temp tables through a READ_ONLY Postgres attach that is
   detached again, so the query itself has no route to Postgres;
4. one view per relation over exactly its granted Parquet files (plus its hot rows; a
   relation without files is its hot rows alone, shaped by ``Relation.columns``);
5. ``allowed_paths`` = those files, ``enable_external_access=false``,
   ``lock_configuration=true``.

Only then does the user SQL run, under a wall-clock watchdog that interrupts it
(``QueryTimeout``). With the gate switched off the sandbox alone still refuses other files,
URLs, ATTACH, COPY, INSTALL/LOAD and SET. SQL is never logged.
"""

from __future__ import annotations

import itertools
import logging
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from trace_core.datasets.duckdb_sql import parquet_select, sql_list, sql_literal
from trace_core.errors import AccessDenied, QueryError, QueryFailed, QueryTimeout, TooLarge
from trace_core.query.relations import HotSource, Relation
from trace_core.settings import Settings

log = logging.getLogger(__name__)

BATCH_ROWS = 8192
_HOT_ALIAS = "__trace_hot"
_USER_ERRORS: tuple[type[duckdb.Error], ...] = (
    duckdb.BinderException,
    duckdb.CatalogException,
    duckdb.ConversionException,
    duckdb.InvalidInputException,
    duckdb.OutOfRangeException,
    duckdb.ParserException,
    duckdb.NotImplementedException,
    duckdb.TypeMismatchException,
    duckdb.ConstraintException,
)


@dataclass(frozen=True)
class S3Access:
    """How DuckDB's httpfs reaches the object store (a temporary in-memory secret)."""

    region: str
    key_id: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    endpoint: str | None = None
    use_ssl: bool = True
    url_style: str = "vhost"

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Access:
        """Credentials from boto3's chain (env, profile, role); endpoint from settings."""
        import boto3

        creds = boto3.session.Session().get_credentials()
        frozen = creds.get_frozen_credentials() if creds else None
        endpoint, use_ssl, style = None, True, "vhost"
        if settings.s3_endpoint_url:
            parts = urlsplit(settings.s3_endpoint_url)
            endpoint, use_ssl, style = parts.netloc, parts.scheme == "https", "path"
        return cls(
            region=settings.aws_region,
            key_id=frozen.access_key if frozen else None,
            secret=frozen.secret_key if frozen else None,
            session_token=frozen.token if frozen else None,
            endpoint=endpoint,
            use_ssl=use_ssl,
            url_style=style,
        )


@dataclass(frozen=True)
class EngineConfig:
    timeout_seconds: float
    memory_limit: str
    threads: int
    extension_dir: Path
    work_root: Path
    s3: S3Access | None = None
    # per-query credentials scoped to the files a query may read (``s3scope``), if set
    s3_scoper: Callable[[Sequence[str]], S3Access] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        s3: S3Access | None = None,
        s3_scoper: Callable[[Sequence[str]], S3Access] | None = None,
    ) -> EngineConfig:
        home = settings.resolved_home()
        return cls(
            timeout_seconds=settings.query_timeout_seconds,
            memory_limit=settings.query_memory_limit,
            threads=settings.query_threads,
            extension_dir=home / "duckdb" / "extensions",
            work_root=home / "query",
            s3=s3,
            s3_scoper=s3_scoper,
        )


@dataclass(frozen=True)
class ResultLimits:
    """``max_rows`` truncates; past ``inline_rows``/``inline_bytes`` the result is spooled."""

    inline_rows: int
    inline_bytes: int
    max_rows: int | None = None


@dataclass
class QueryResult:
    """Columns plus either inline Arrow batches or a spooled Parquet file."""

    columns: list[dict[str, str]]
    batches: list[pa.RecordBatch]
    row_count: int
    bytes: int
    truncated: bool
    spool: Path | None = None
    # milliseconds: "sandbox" (views, limits, lock) and "duckdb" (the query and its batches)
    timings: dict[str, float] = field(default_factory=dict)
    warm: bool = False  # ran in a warm sandbox (``query.warm``), not a fresh instance


class Workdir:
    """Per-query paths under a private (0700) root: a spill directory DuckDB creates only if
    it spills, and a spool file written only for exported results."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        self.spill = root / name
        self.spool = root / f"{name}.parquet"

    def cleanup(self) -> None:
        if self.spill.exists():
            shutil.rmtree(self.spill, ignore_errors=True)
        self.spool.unlink(missing_ok=True)


# --- extensions --------------------------------------------------------------------------

_ext_lock = threading.Lock()
_ext_ready: set[tuple[str, Path]] = set()


def ensure_extension(name: str, extension_dir: Path) -> None:
    """Install ``name`` from its wheel into ``extension_dir`` and verify its signature by a
    signed LOAD, once per process. Sandboxes then load it without the slow signature check
    (``allow_unsigned_extensions``); LOAD is impossible for user SQL once they are locked."""
    import duckdb_extensions

    with _ext_lock:
        if (name, extension_dir) in _ext_ready:
            return
        extension_dir.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(":memory:", config=base_config(extension_dir))
        try:
            duckdb_extensions.import_extension(name, con=con)
            con.execute(f"LOAD {name}")
        finally:
            con.close()
        _ext_ready.add((name, extension_dir))


def base_config(extension_dir: Path) -> dict[str, Any]:
    return {
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "extension_directory": str(extension_dir),
    }


def new_instance(config: EngineConfig) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB with the sandbox's resource limits (not yet locked)."""
    if config.s3 is not None:
        ensure_extension("httpfs", config.extension_dir)
    con = duckdb.connect(
        ":memory:",
        config={
            **base_config(config.extension_dir),
            "allow_unsigned_extensions": True,
            "memory_limit": config.memory_limit,
            "threads": config.threads,
        },
    )
    if config.s3 is not None:
        con.execute("LOAD httpfs")
    # an instance's first statement pays one-time set-up (a few ms); pay it here, off the
    # request path, since pooled instances are made ahead of time
    con.execute("SELECT 1").fetchall()
    return con


class SandboxPool:
    """Fresh, never-used DuckDB instances made ahead of time, and closed afterwards, on a
    background thread: creating one costs ~10 ms that a query should not wait for. Every
    instance serves exactly one query."""

    def __init__(self, config: EngineConfig, spare: int = 2) -> None:
        self.config = config
        self._ready: queue.Queue[duckdb.DuckDBPyConnection] = queue.Queue(maxsize=spare)
        self._done: queue.Queue[duckdb.DuckDBPyConnection] = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="duckdb-sandbox-pool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        for q in (self._ready, self._done):
            while not q.empty():
                q.get_nowait().close()

    def take(self) -> duckdb.DuckDBPyConnection:
        """A prepared instance, or a new one when none is ready."""
        try:
            return self._ready.get_nowait()
        except queue.Empty:
            return new_instance(self.config)

    def discard(self, con: duckdb.DuckDBPyConnection) -> None:
        """Close a used instance off the request path, then refill (refilling while a query
        runs would take CPU from it)."""
        if self._thread is None:
            con.close()
            return
        self._done.put(con)
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            while not self._done.empty():
                self._done.get_nowait().close()
            if self._ready.full():
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                self._ready.put_nowait(new_instance(self.config))
            except duckdb.Error:
                log.exception("could not prepare a DuckDB sandbox")
                self._stop.wait(timeout=1.0)


# --- the sandbox -------------------------------------------------------------------------


def open_sandbox(
    con: duckdb.DuckDBPyConnection,
    relations: Sequence[Relation],
    config: EngineConfig,
    workdir: Workdir,
) -> None:
    """Make ``con`` (a fresh instance) a locked sandbox where exactly ``relations`` exist."""
    files = [uri for rel in relations for uri in rel.all_files]
    needs_s3 = any(uri.startswith("s3://") for uri in files)
    needs_pg = any(rel.hot and _shaped(rel) for rel in relations)
    if needs_s3:
        ensure_extension("httpfs", config.extension_dir)
        con.execute("LOAD httpfs")
        s3_files = [uri for uri in files if uri.startswith("s3://")]
        _create_s3_secret(con, config.s3_scoper(s3_files) if config.s3_scoper else config.s3)
    hot_tables: dict[str, list[str]] = {}
    if needs_pg:
        ensure_extension("postgres_scanner", config.extension_dir)
        con.execute("LOAD postgres_scanner")
        hot_tables = _copy_hot_rows(con, relations)
    statements = view_statements(relations, hot_tables, temp=True)
    statements += [f"SET temp_directory = {sql_literal(str(workdir.spill))}"]
    statements += lock_statements(files)
    # one call (all trusted text): DuckDB runs them in order and stops at the first error,
    # which fails the query before any user SQL runs
    con.execute(";\n".join(statements))


def view_statements(
    relations: Sequence[Relation], hot_tables: dict[str, list[str]], *, temp: bool
) -> list[str]:
    """``CREATE [TEMP] VIEW`` per shaped relation over exactly its files (and hot tables)."""
    statements = []
    kind = "TEMP VIEW" if temp else "VIEW"
    for rel in relations:
        if not _shaped(rel):
            continue
        parts = [parquet_select(rel.files)] if rel.files else []
        parts += [parquet_select(c.files, c.start, c.end) for c in rel.clipped]
        parts += [f"SELECT * FROM {_ident(t)}" for t in hot_tables.get(rel.name, [])]
        if not parts:  # no files and no hot rows yet: an empty relation of the right shape
            cols = ", ".join(f"CAST(NULL AS {t}) AS {_ident(n)}" for n, t in rel.columns)
            parts = [f"SELECT {cols} WHERE false"]
        statements.append(f"CREATE {kind} {_ident(rel.name)} AS " + " UNION ALL ".join(parts))
    return statements


def lock_statements(files: Sequence[str]) -> list[str]:
    """Exactly ``files`` readable, nothing else reachable, no setting changeable after."""
    return [
        f"SET allowed_paths = {sql_list(files)}",
        "SET enable_external_access = false",
        "SET lock_configuration = true",
    ]


def _shaped(rel: Relation) -> bool:
    """A relation gets a view when its shape is known: from its files, else its columns."""
    return bool(rel.all_files or rel.columns)


def _create_s3_secret(con: duckdb.DuckDBPyConnection, s3: S3Access | None) -> None:
    if s3 is None:
        raise QueryError(
            "dataset files are on S3 but no S3 access is configured", code="storage_unavailable"
        )
    opts = [
        f"REGION {sql_literal(s3.region)}",
        f"URL_STYLE {sql_literal(s3.url_style)}",
        f"USE_SSL {str(s3.use_ssl).lower()}",
    ]
    if s3.endpoint:
        opts.append(f"ENDPOINT {sql_literal(s3.endpoint)}")
    if s3.key_id and s3.secret:
        opts += [f"KEY_ID {sql_literal(s3.key_id)}", f"SECRET {sql_literal(s3.secret)}"]
    if s3.session_token:
        opts.append(f"SESSION_TOKEN {sql_literal(s3.session_token)}")
    con.execute(f"CREATE TEMPORARY SECRET trace_s3 (TYPE s3, {', '.join(opts)})")


def _copy_hot_rows(
    con: duckdb.DuckDBPyConnection, relations: Sequence[Relation]
) -> dict[str, list[str]]:
    """Copy hot rows into temp tables shaped like the relation's Parquet (same columns, same
    types, same order), then detach Postgres. Returns temp table names per relation."""
    out: dict[str, list[str]] = {}
    urls = sorted({src.url for rel in relations if _shaped(rel) for src in rel.hot})
    aliases = {url: f"{_HOT_ALIAS}{i}" for i, url in enumerate(urls)}
    for url, alias in aliases.items():
        con.execute(f"ATTACH {sql_literal(url)} AS {alias} (TYPE postgres, READ_ONLY)")
    try:
        for rel in relations:
            if not rel.hot or not _shaped(rel):
                continue
            if rel.all_files:
                described = con.execute(f"DESCRIBE {parquet_select(rel.all_files)}").fetchall()
                shape = [(str(c[0]), str(c[1])) for c in described]
            else:
                shape = list(rel.columns)
            for i, src in enumerate(rel.hot):
                table = f"__hot_{rel.name}_{i}"
                con.execute(
                    f"CREATE TEMP TABLE {_ident(table)} AS "
                    + _hot_select(con, aliases[src.url], src, shape)
                )
                out.setdefault(rel.name, []).append(table)
    finally:
        for alias in aliases.values():
            con.execute(f"DETACH {alias}")
    return out


def _hot_select(
    con: duckdb.DuckDBPyConnection, alias: str, src: HotSource, cold: list[tuple[str, str]]
) -> str:
    schema, _, table = src.table.partition(".")
    qualified = f"{alias}.{_ident(schema)}.{_ident(table)}"
    hot_cols = {row[0] for row in con.execute(f"DESCRIBE {qualified}").fetchall()}
    projection = ", ".join(
        f"CAST({_ident(name)} AS {ctype}) AS {_ident(name)}"
        if name in hot_cols
        else f"CAST(NULL AS {ctype}) AS {_ident(name)}"
        for name, ctype in cold
    )
    return f"SELECT {projection} FROM {qualified} WHERE {src.block_predicate()}"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --- running -----------------------------------------------------------------------------


class _Watchdog:
    """One daemon thread that interrupts connections past their deadline (a Timer per query
    would start a thread per query)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watched: dict[int, tuple[float, duckdb.DuckDBPyConnection]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, con: duckdb.DuckDBPyConnection, seconds: float) -> int:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="duckdb-watchdog", daemon=True
                )
                self._thread.start()
            ident = next(self._ids)
            self._watched[ident] = (time.monotonic() + seconds, con)
            self._cond.notify()
            return ident

    def cancel(self, ident: int) -> None:
        with self._cond:
            self._watched.pop(ident, None)

    def _loop(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for ident, (deadline, con) in list(self._watched.items()):
                    if deadline <= now:
                        del self._watched[ident]
                        try:
                            con.interrupt()
                        except duckdb.Error:  # closed meanwhile: nothing left to stop
                            log.debug("interrupt of a finished query skipped")
                nearest = min((d for d, _ in self._watched.values()), default=now + 60)
                self._cond.wait(timeout=max(0.0, nearest - now))


_watchdog = _Watchdog()


def execute(
    sql: str,
    relations: Sequence[Relation],
    config: EngineConfig,
    limits: ResultLimits,
    workdir: Workdir,
    pool: SandboxPool | None = None,
) -> QueryResult:
    """Run already-gated SQL over ``relations`` in a fresh sandbox (``execute_on``), then
    close it (off the request path when ``pool`` is given). Raises as ``execute_on``."""
    con = pool.take() if pool else new_instance(config)
    try:
        return execute_on(con, sql, relations, config, limits, workdir)
    finally:
        if pool:
            pool.discard(con)
        else:
            con.close()


def execute_on(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    relations: Sequence[Relation],
    config: EngineConfig,
    limits: ResultLimits,
    workdir: Workdir,
) -> QueryResult:
    """Run already-gated SQL over ``relations`` in ``con``, a fresh never-used instance that
    this call locks into a sandbox; the caller closes it and never reuses it.

    Raises ``QueryTimeout`` (wall clock), ``TooLarge`` (memory limit), ``AccessDenied`` (the
    sandbox refused a read) or ``QueryFailed`` (the SQL is wrong for the data).
    """
    started = time.perf_counter()
    return _run(
        con,
        sql,
        config,
        limits,
        workdir,
        started,
        lambda: open_sandbox(con, relations, config, workdir),
    )


def execute_in(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    config: EngineConfig,
    limits: ResultLimits,
    workdir: Workdir,
) -> QueryResult:
    """Run already-gated SQL in a new connection to ``con``, an already locked sandbox (a
    warm one, ``query.warm``); the connection, and whatever the SQL made in it, is closed
    after. Raises as ``execute_on``."""
    started = time.perf_counter()
    try:
        cursor = con.cursor()
    except duckdb.Error as exc:
        raise _translate(exc) from exc
    try:
        return _run(cursor, sql, config, limits, workdir, started, None)
    finally:
        cursor.close()


def _run(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    config: EngineConfig,
    limits: ResultLimits,
    workdir: Workdir,
    started: float,
    prepare: Callable[[], None] | None,
) -> QueryResult:
    watch = _watchdog.watch(con, config.timeout_seconds)
    try:
        if prepare is not None:
            prepare()
        opened = time.perf_counter()
        result = _collect(con, sql, limits, workdir)
        result.timings = {
            "sandbox": (opened - started) * 1000,
            "duckdb": (time.perf_counter() - opened) * 1000,
        }
        return result
    except duckdb.InterruptException as exc:
        raise QueryTimeout(f"query exceeded {config.timeout_seconds:g} s") from exc
    except duckdb.Error as exc:
        raise _translate(exc) from exc
    finally:
        _watchdog.cancel(watch)


def _collect(
    con: duckdb.DuckDBPyConnection, sql: str, limits: ResultLimits, workdir: Workdir
) -> QueryResult:
    cursor = con.execute(sql)
    if cursor.description is None:
        return QueryResult([], [], 0, 0, False)
    columns = [{"name": str(d[0]), "type": str(d[1])} for d in cursor.description]
    reader = cursor.to_arrow_reader(BATCH_ROWS)
    result = QueryResult(columns, [], 0, 0, False)
    writer: pq.ParquetWriter | None = None
    try:
        for batch in _batches(reader):
            if limits.max_rows is not None and result.row_count + batch.num_rows > limits.max_rows:
                batch = batch.slice(0, limits.max_rows - result.row_count)
                result.truncated = True
            result.row_count += batch.num_rows
            result.bytes += batch.nbytes
            if writer is None and (
                result.row_count > limits.inline_rows or result.bytes > limits.inline_bytes
            ):
                result.spool = workdir.spool
                writer = pq.ParquetWriter(result.spool, reader.schema)
                for held in result.batches:
                    writer.write_batch(held)
                result.batches = []
            if writer is not None:
                writer.write_batch(batch)
            else:
                result.batches.append(batch)
            if result.truncated:
                break
    finally:
        if writer is not None:
            writer.close()
    return result


# DuckDB type names -> Arrow types, for the schema of an empty result (no batch carries it).
_EMPTY_TYPES = {
    "BOOLEAN": pa.bool_(),
    "TINYINT": pa.int8(),
    "SMALLINT": pa.int16(),
    "INTEGER": pa.int32(),
    "BIGINT": pa.int64(),
    "UTINYINT": pa.uint8(),
    "USMALLINT": pa.uint16(),
    "UINTEGER": pa.uint32(),
    "UBIGINT": pa.uint64(),
    "FLOAT": pa.float32(),
    "DOUBLE": pa.float64(),
    "VARCHAR": pa.string(),
    "BLOB": pa.binary(),
    "DATE": pa.date32(),
    "TIMESTAMP": pa.timestamp("us"),
    "TIMESTAMP WITH TIME ZONE": pa.timestamp("us", tz="UTC"),
}


def result_table(result: QueryResult) -> pa.Table:
    """The whole result as one Arrow table: the inline batches, or the spooled Parquet (read
    before the caller's workdir is cleaned up). An empty result keeps its column names, typed
    from DuckDB's type names (strings where no Arrow type is known)."""
    if result.spool is not None:
        return pq.read_table(result.spool)
    if result.batches:
        return pa.Table.from_batches(result.batches)
    return pa.schema(
        [
            pa.field(c["name"], _EMPTY_TYPES.get(c["type"].upper(), pa.string()))
            for c in result.columns
        ]
    ).empty_table()


def _batches(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    while True:
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return


def _translate(exc: duckdb.Error) -> QueryError:
    if isinstance(exc, duckdb.OutOfMemoryException):
        return TooLarge("query exceeded the memory limit", code="memory_limit")
    if isinstance(exc, duckdb.PermissionException):
        log.warning("sandbox refused a read", extra={"duckdb_error": type(exc).__name__})
        return AccessDenied(
            "the query tried to reach data outside its grant", code="sandbox_refused"
        )
    if isinstance(exc, duckdb.IOException):
        log.warning("engine could not read its input", extra={"duckdb_error": type(exc).__name__})
        return QueryError("dataset storage could not be read", code="storage_unavailable")
    if isinstance(exc, _USER_ERRORS):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return QueryFailed(first[:300])
    log.error("query execution failed", extra={"duckdb_error": type(exc).__name__})
    return QueryFailed("query execution failed", code="execution_failed")
