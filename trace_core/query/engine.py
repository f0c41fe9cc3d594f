"""The sandboxed DuckDB engine: one fresh in-memory database per query.

Trusted code builds everything before untrusted SQL runs:

1. a new in-memory DuckDB (extension autoload/autoinstall off, memory and thread limits, a
   private spill directory);
2. extensions only when needed, loaded offline from the pip wheels (``httpfs`` for S3
   objects, ``postgres_scanner`` for hot rows): installed once per process from
   ``duckdb_extensions`` and signature-checked once, then loaded per query;
3. hot rows (``HotSource``) copied into temp tables through a READ_ONLY Postgres attach that is
   detached again, so the query itself has no route to Postgres;
4. one view per relation over exactly its granted Parquet files (plus its hot rows);
5. ``allowed_paths`` = those files, ``enable_external_access=false``,
   ``lock_configuration=true``.

Only then does the user SQL run, under a wall-clock timer that interrupts it
(``QueryTimeout``). With the gate switched off the sandbox alone still refuses other files,
URLs, ATTACH, COPY, INSTALL/LOAD and SET. SQL is never logged.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from trace_core.errors import AccessDenied, QueryError, QueryFailed, QueryTimeout, TooLarge
from trace_core.query.attach import HotSource, Relation
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

    @classmethod
    def from_settings(cls, settings: Settings, s3: S3Access | None = None) -> EngineConfig:
        home = settings.resolved_home()
        return cls(
            timeout_seconds=settings.query_timeout_seconds,
            memory_limit=settings.query_memory_limit,
            threads=settings.query_threads,
            extension_dir=home / "duckdb" / "extensions",
            work_root=home / "query",
            s3=s3,
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


class Workdir:
    """A private (0700) per-query directory for spills and spooled results."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="q-", dir=root))

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


# --- extensions --------------------------------------------------------------------------

_ext_lock = threading.Lock()
_ext_ready: set[tuple[str, Path]] = set()


def ensure_extension(name: str, extension_dir: Path) -> None:
    """Install ``name`` from its wheel into ``extension_dir`` and verify its signature by a
    signed LOAD, once per process. Per-query loads then skip the (slow) signature check."""
    import duckdb_extensions

    with _ext_lock:
        if (name, extension_dir) in _ext_ready:
            return
        extension_dir.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(":memory:", config=_base_config(extension_dir))
        try:
            duckdb_extensions.import_extension(name, con=con)
            con.execute(f"LOAD {name}")
        finally:
            con.close()
        _ext_ready.add((name, extension_dir))


def _base_config(extension_dir: Path) -> dict[str, Any]:
    return {
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "extension_directory": str(extension_dir),
    }


# --- the sandbox -------------------------------------------------------------------------


def open_sandbox(
    relations: Sequence[Relation], config: EngineConfig, workdir: Path
) -> duckdb.DuckDBPyConnection:
    """A locked-down connection where exactly ``relations`` exist as views."""
    files = [uri for rel in relations for uri in rel.files]
    needs_s3 = any(uri.startswith("s3://") for uri in files)
    needs_pg = any(rel.hot and rel.files for rel in relations)
    extensions = (["httpfs"] if needs_s3 else []) + (["postgres_scanner"] if needs_pg else [])
    for name in extensions:
        ensure_extension(name, config.extension_dir)
    spill = workdir / "spill"
    spill.mkdir(mode=0o700, exist_ok=True)
    con = duckdb.connect(
        ":memory:",
        config={
            **_base_config(config.extension_dir),
            "allow_unsigned_extensions": bool(extensions),
            "memory_limit": config.memory_limit,
            "threads": config.threads,
            "temp_directory": str(spill),
        },
    )
    try:
        for name in extensions:
            con.execute(f"LOAD {name}")
        if needs_s3:
            _create_s3_secret(con, config.s3)
        hot_tables = _copy_hot_rows(con, relations) if needs_pg else {}
        for rel in relations:
            if not rel.files:
                continue
            parts = [f"SELECT * FROM read_parquet({_list(rel.files)})"]
            parts += [f"SELECT * FROM {_ident(t)}" for t in hot_tables.get(rel.name, [])]
            con.execute(f"CREATE TEMP VIEW {_ident(rel.name)} AS " + " UNION ALL ".join(parts))
        con.execute(f"SET allowed_paths = {_list(files)}")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def _create_s3_secret(con: duckdb.DuckDBPyConnection, s3: S3Access | None) -> None:
    if s3 is None:
        raise QueryError(
            "dataset files are on S3 but no S3 access is configured", code="storage_unavailable"
        )
    opts = [
        f"REGION {_lit(s3.region)}",
        f"URL_STYLE {_lit(s3.url_style)}",
        f"USE_SSL {str(s3.use_ssl).lower()}",
    ]
    if s3.endpoint:
        opts.append(f"ENDPOINT {_lit(s3.endpoint)}")
    if s3.key_id and s3.secret:
        opts += [f"KEY_ID {_lit(s3.key_id)}", f"SECRET {_lit(s3.secret)}"]
    if s3.session_token:
        opts.append(f"SESSION_TOKEN {_lit(s3.session_token)}")
    con.execute(f"CREATE TEMP SECRET trace_s3 (TYPE s3, {', '.join(opts)})")


def _copy_hot_rows(
    con: duckdb.DuckDBPyConnection, relations: Sequence[Relation]
) -> dict[str, list[str]]:
    """Copy hot rows into temp tables shaped like the relation's Parquet (same columns, same
    types, same order), then detach Postgres. Returns temp table names per relation."""
    out: dict[str, list[str]] = {}
    urls = sorted({src.url for rel in relations if rel.files for src in rel.hot})
    aliases = {url: f"{_HOT_ALIAS}{i}" for i, url in enumerate(urls)}
    for url, alias in aliases.items():
        con.execute(f"ATTACH {_lit(url)} AS {alias} (TYPE postgres, READ_ONLY)")
    try:
        for rel in relations:
            if not rel.files:
                continue
            cold = con.execute(
                f"DESCRIBE SELECT * FROM read_parquet({_list(rel.files)})"
            ).fetchall()
            for i, src in enumerate(rel.hot):
                table = f"__hot_{rel.name}_{i}"
                con.execute(
                    f"CREATE TEMP TABLE {_ident(table)} AS "
                    + _hot_select(con, aliases[src.url], src, [(c[0], c[1]) for c in cold])
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
    where = f"block_number >= {int(src.min_block)}"
    if src.chain_id is not None:
        where += f" AND chain_id = {int(src.chain_id)}"
    return f"SELECT {projection} FROM {qualified} WHERE {where}"


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _list(items: Sequence[str]) -> str:
    return "[" + ", ".join(_lit(item) for item in items) + "]"


# --- running -----------------------------------------------------------------------------


def execute(
    sql: str,
    relations: Sequence[Relation],
    config: EngineConfig,
    limits: ResultLimits,
    workdir: Path,
) -> QueryResult:
    """Run already-gated SQL over ``relations`` in a fresh sandbox.

    Raises ``QueryTimeout`` (wall clock), ``TooLarge`` (memory limit), ``AccessDenied`` (the
    sandbox refused a read) or ``QueryFailed`` (the SQL is wrong for the data).
    """
    con = open_sandbox(relations, config, workdir)
    timer = threading.Timer(config.timeout_seconds, con.interrupt)
    timer.daemon = True
    timer.start()
    try:
        return _collect(con, sql, limits, workdir)
    except duckdb.InterruptException as exc:
        raise QueryTimeout(f"query exceeded {config.timeout_seconds:g} s") from exc
    except duckdb.Error as exc:
        raise _translate(exc) from exc
    finally:
        timer.cancel()
        con.close()


def _collect(
    con: duckdb.DuckDBPyConnection, sql: str, limits: ResultLimits, workdir: Path
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
                result.spool = workdir / "result.parquet"
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
    if isinstance(exc, _USER_ERRORS):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return QueryFailed(first[:300])
    log.error("query execution failed", extra={"duckdb_error": type(exc).__name__})
    return QueryFailed("query execution failed", code="execution_failed")
