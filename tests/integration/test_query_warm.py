"""Warm sandboxes (``query.warm``): a reused, locked DuckDB per (org, exact files) keeps nothing
of one query for the next, refuses what a fresh sandbox refuses, and is never another org's.

Real DuckDB and Parquet files; the service-level test runs real worker processes with the
gate off (the sandbox alone), on real Postgres for grants and audit.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration.test_query_service import blocks_table
from tests.integration.test_tenancy_query import Orgs
from trace_core.db.connection import Databases
from trace_core.errors import AccessDenied, QueryError, QueryFailed
from trace_core.query.engine import ResultLimits, execute_in
from trace_core.query.relations import HotSource, Relation
from trace_core.query.sandbox import EngineConfig, Workdir
from trace_core.query.service import QueryRequest, QueryService
from trace_core.query.warm import Sandboxes, build_warm, warm_key
from trace_core.settings import Settings

LIMITS = ResultLimits(inline_rows=1000, inline_bytes=1 << 20)
COUNT = "SELECT count(*), sum(gas_used) FROM blocks"


def _config(tmp_path: Path) -> EngineConfig:
    return EngineConfig(
        timeout_seconds=30,
        memory_limit="1GB",
        threads=1,
        extension_dir=tmp_path / "ext",
        work_root=tmp_path / "query",
    )


def _file(tmp_path: Path, name: str, table: pa.Table) -> str:
    path = tmp_path / f"{name}.parquet"
    pq.write_table(table, path)
    return str(path)


def _rows(config: EngineConfig, con: object, sql: str) -> list[tuple[object, ...]]:
    result = execute_in(con, sql, config, LIMITS, Workdir(config.work_root))  # type: ignore[arg-type]
    return [tuple(r.values()) for b in result.batches for r in b.to_pylist()]


def test_a_warm_sandbox_keeps_nothing_of_a_query_and_refuses_what_a_fresh_one_does(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    mine = _file(tmp_path, "mine", blocks_table(0, 10))
    other = _file(tmp_path, "other", blocks_table(0, 50, gas=1))
    relations = (Relation("blocks", (mine,), ()),)
    key = warm_key("org-a", relations)
    assert key is not None
    box = build_warm(key, relations, config)
    try:
        assert _rows(config, box.con, COUNT) == [(10, sum(21_000 + n for n in range(10)))]
        # a query's own objects, variables, prepared statements and session settings exist
        # in its connection only
        for sql in (
            "CREATE TEMP TABLE leak AS SELECT * FROM blocks",
            "CREATE TEMP VIEW leak_v AS SELECT 1 AS x",
            "CREATE TEMP MACRO leak_m(x) AS x + 1",
            "SET VARIABLE leak_var = 42",
            "PREPARE leak_p AS SELECT 1",
            "SET search_path = 'temp'",
        ):
            execute_in(box.con, sql, config, LIMITS, Workdir(config.work_root))
        for sql in ("SELECT * FROM leak", "SELECT * FROM leak_v", "SELECT leak_m(1)",
                    "EXECUTE leak_p"):  # fmt: skip
            with pytest.raises(QueryFailed):
                _rows(config, box.con, sql)
        assert _rows(config, box.con, "SELECT getvariable('leak_var')") == [(None,)]
        assert _rows(config, box.con, "SELECT current_setting('search_path')") == [("",)]
        # nothing outlives a connection: the database is read-only, ATTACH of an in-memory
        # one is refused, settings are locked, other files and writes are out of reach
        refused = [
            "CREATE TABLE kept AS SELECT 1 AS x",
            "CREATE VIEW kept AS SELECT 1 AS x",
            "CREATE MACRO kept(x) AS x",
            "CREATE SCHEMA kept",
            "CREATE SEQUENCE kept",
            "CREATE TYPE kept AS ENUM ('a')",
            "CREATE OR REPLACE VIEW blocks AS SELECT 1 AS gas_used",
            "DROP VIEW blocks",
            "ATTACH ':memory:' AS kept",
            f"ATTACH '{box.root / 'views.duckdb'}' AS kept (READ_ONLY)",  # its own, unlinked
            f"ATTACH '{tmp_path / 'kept.duckdb'}' AS kept",
            "SET threads = 4",
            "SET GLOBAL enable_external_access = true",
            f"SET allowed_paths = ['{other}']",
            "RESET lock_configuration",
            "LOAD httpfs",
            f"SELECT * FROM read_parquet('{other}')",
            f"COPY (SELECT 1) TO '{tmp_path / 'out.csv'}'",
        ]
        for sql in refused:
            with pytest.raises((QueryFailed, AccessDenied, QueryError)):
                execute_in(box.con, sql, config, LIMITS, Workdir(config.work_root))
        assert not (tmp_path / "out.csv").exists() and not (tmp_path / "kept.duckdb").exists()
        assert _rows(config, box.con, COUNT) == [(10, sum(21_000 + n for n in range(10)))]
        assert _rows(config, box.con, "SELECT current_setting('threads')") == [(1,)]
    finally:
        box.close()
    assert not box.root.exists()


def test_warm_keys_and_checkout(tmp_path: Path) -> None:
    """One org's warm sandbox is never another's, even over the same files; hot rows and
    non-local files get none; a sandbox is one caller's at a time, and one a query changed
    (an attached database) is discarded."""
    config = _config(tmp_path)
    mine = _file(tmp_path, "mine", blocks_table(0, 10))
    relations = (Relation("blocks", (mine,), ()),)
    hot = HotSource(url="postgresql://x", table="data.hot_blocks", min_block=10)
    assert warm_key("a", relations) != warm_key("b", relations)
    assert warm_key("a", relations) != warm_key("a", (Relation("blocks", (mine, mine), ()),))
    assert warm_key(None, relations) is None
    assert warm_key("a", (Relation("blocks", (mine,), (), hot=(hot,)),)) is None
    assert warm_key("a", (Relation("blocks", ("s3://bucket/x.parquet",), ()),)) is None

    sandboxes = Sandboxes(config, spare=0, warm_capacity=1)
    warm = sandboxes.warm
    assert warm is not None
    key_a = warm_key("a", relations)
    assert key_a is not None
    warm._live.add(key_a)
    warm._add(build_warm(key_a, relations, config))  # as the background thread does
    try:
        lease_b = sandboxes.take("b", relations)  # same files, other org: a fresh instance
        assert lease_b.warm is None and lease_b.fresh is not None
        lease_b.fresh.close()
        lease = sandboxes.take("a", relations)
        assert lease.warm is not None
        assert sandboxes.take("a", relations).warm is None  # checked out: not shared
        result = sandboxes.execute(lease, COUNT, LIMITS, Workdir(config.work_root))
        assert result.warm and result.row_count == 1
        sandboxes.give_back(lease, ok=True)
        again = sandboxes.take("a", relations)
        assert again.warm is lease.warm
        again.warm.databases = ("changed",)  # as if a query had attached a database
        sandboxes.give_back(again, ok=True)
        assert warm.take(key_a) is None and warm.discarded == 1
        assert not again.warm.root.exists()
    finally:
        sandboxes.stop()


def test_workers_serve_each_org_its_own_warm_sandbox(
    settings: Settings, dbs: Databases, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Through a worker process with the gate off: org A's queries come to run warm, what a
    query made is gone for the next, and org B's queries never run in A's sandbox."""
    orgs = Orgs(settings, dbs, tmp_path)
    cfg = settings.model_copy(update={"query_workers": 1, "query_warm_sandboxes": 2})
    service = QueryService(cfg, dbs, orgs.store, hot_sources=None, gate=False)
    service.open()
    caplog.set_level(logging.INFO, logger="trace_core.query.service")

    def ask(key: str, sql: str) -> tuple[object, str]:
        caplog.clear()
        try:
            rows: object = service.query("user", key, QueryRequest(sql=sql))["rows"]
        except QueryError as exc:
            rows = exc.code
        (record,) = [r for r in caplog.records if r.getMessage().startswith("query ")]
        return rows, str(record.sandbox)  # type: ignore[attr-defined]

    a_count = [[100, str(sum(21_000 + n for n in range(100)))]]
    try:
        assert ask(orgs.a_key, COUNT) == (a_count, "fresh")
        # the warm sandbox is built in the background once a second fresh query succeeded
        deadline = time.monotonic() + 60  # generous for a loaded CI box; usually ~10 queries
        while time.monotonic() < deadline:
            rows, sandbox = ask(orgs.a_key, COUNT)
            assert rows == a_count
            if sandbox == "warm":
                break
        assert sandbox == "warm"
        assert ask(orgs.a_key, "CREATE TEMP TABLE leak AS SELECT 1 AS x") == ([[1]], "warm")
        assert ask(orgs.a_key, "SET VARIABLE v = 7")[1] == "warm"
        assert ask(orgs.a_key, "SELECT getvariable('v')") == ([[None]], "warm")
        assert ask(orgs.a_key, "SELECT * FROM leak") == ("query_failed", "warm")
        # org B reads its own files in a sandbox of its own, never A's
        assert ask(orgs.b_key, COUNT) == ([[50, str(sum(1 + n for n in range(50)))]], "fresh")
    finally:
        service.close()
