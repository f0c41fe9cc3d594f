"""The sandboxed DuckDB engine: user SQL in a fresh in-memory database per query (built by
``query.sandbox``), or in a warm, equally locked one reused per org and exact files
(``query.warm``).

Only after the sandbox is built and locked does the user SQL run, under a wall-clock watchdog
that interrupts it (``QueryTimeout``). With the gate switched off the sandbox alone still
refuses other files, URLs, ATTACH, COPY, INSTALL/LOAD and SET. SQL is never logged.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from trace_core.errors import AccessDenied, QueryError, QueryFailed, QueryTimeout, TooLarge
from trace_core.query.relations import Relation
from trace_core.query.sandbox import (
    EngineConfig,
    SandboxPool,
    Workdir,
    new_instance,
    open_sandbox,
)

log = logging.getLogger(__name__)

BATCH_ROWS = 8192
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
    # the inline rows already rendered as JSON values (``export.json_rows``), in place of
    # ``batches``: how a worker answers a caller that wants JSON (``workers._Job.json_rows``)
    rows: list[list[Any]] | None = None


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
