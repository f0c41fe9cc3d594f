"""Building a query's DuckDB sandbox: trusted code, before any user SQL runs.

1. a new in-memory DuckDB (extension autoload/autoinstall off, memory and thread limits, a
   private spill directory), made ahead of time (``SandboxPool``);
2. extensions only when needed, loaded offline from the pip wheels (``httpfs`` for S3
   objects, ``postgres_scanner`` for hot rows): installed once per process from
   ``duckdb_extensions`` and signature-checked once, then loaded per query;
3. hot rows (``HotSource``) copied into temp tables through a READ_ONLY Postgres attach that is
   detached again, so the query itself has no route to Postgres;
4. one view per relation over exactly its granted Parquet files (plus its hot rows; a
   relation without files is its hot rows alone, shaped by ``Relation.columns``);
5. ``allowed_paths`` = those files, ``enable_external_access=false``,
   ``lock_configuration=true``.

``query.engine`` runs the SQL in it; ``query.warm`` builds warm sandboxes from these pieces.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb

from trace_core.datasets.duckdb_sql import parquet_select, sql_list, sql_literal
from trace_core.errors import QueryError
from trace_core.query.relations import HotSource, Relation
from trace_core.settings import Settings

log = logging.getLogger(__name__)

_HOT_ALIAS = "__trace_hot"


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
        create_s3_secret(con, config.s3_scoper(s3_files) if config.s3_scoper else config.s3)
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


def create_s3_secret(con: duckdb.DuckDBPyConnection, s3: S3Access | None) -> None:
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
