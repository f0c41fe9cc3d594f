"""Query isolation: queries that crash or hang DuckDB cost only themselves.

Real uvicorn, real DuckDB worker processes under real OS limits (RLIMIT_STACK, RLIMIT_CPU),
real Postgres for grants and audit. Crashing queries run while other queries run, and every
other query must succeed with the right answer.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.integration.test_query_service import (
    RecordingStore,
    audit_rows,
    blocks_table,
    post,
    publish,
    serving,
)
from trace_core.db.connection import Databases
from trace_core.query.app import create_app
from trace_core.query.client import local_user_token
from trace_core.query.warm import warm_root
from trace_core.query.workers import EngineWorkers
from trace_core.settings import Settings
from trace_core.storage.local import LocalStore

# recursion in DuckDB's binder deeper than a 256 KiB stack: SIGSEGV in the worker
STACK_BREAKER = "SELECT " + "abs(" * 300 + "gas_used" + ")" * 300 + " FROM blocks"
# a five-way cross join of 100 rows: far more CPU than the 2 s budget
CPU_HOG = (
    "SELECT sum(a.gas_used * b.gas_used + c.gas_used) "
    "FROM blocks a, blocks b, blocks c, blocks d, blocks e"
)
# nested scalar subqueries: DuckDB's planner spins without checking for interrupts
HANG = "SELECT " + "(SELECT " * 30 + "1" + ")" * 30


@pytest.fixture
def store(trace_home: Path) -> RecordingStore:
    return RecordingStore(LocalStore(trace_home / "objects"))


def _wait_for_workers(workers: EngineWorkers, replaced: int, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while workers.replaced < replaced or len(workers.pids()) < workers.size:
        assert time.monotonic() < end, (workers.replaced, workers.pids())
        time.sleep(0.05)


def test_crashing_queries_cost_only_themselves(
    settings: Settings, dbs: Databases, store: RecordingStore, tmp_path: Path
) -> None:
    publish(settings, store, tmp_path, blocks_table(0, 100))
    cfg = settings.model_copy(
        update={
            "query_workers": 2,
            "query_cpu_seconds": 2,
            "query_worker_stack_bytes": 256 * 1024,
            "query_max_nesting_depth": 400,
        }
    )
    token = local_user_token(cfg)
    app = create_app(cfg, dbs, store, hot_sources=None)
    with serving(app) as client:
        workers = app.state.service.workers
        first_pids = set(workers.pids())

        def good(k: int) -> tuple[int, object]:
            sql = f"SELECT count(*), sum(gas_used) FROM blocks WHERE block_number < {k}"
            response = post(client, token, {"sql": sql})
            return response.status_code, response.json()

        def bad(sql: str) -> httpx.Response:
            return post(client, token, {"sql": sql})

        with ThreadPoolExecutor(max_workers=6) as pool:
            crashes = [pool.submit(bad, sql) for sql in (STACK_BREAKER, CPU_HOG) * 2]
            goods = [pool.submit(good, k) for k in range(1, 41)]
            crashed = [f.result() for f in crashes]
            answers = [f.result() for f in goods]

        for k, (status, body) in zip(range(1, 41), answers, strict=True):
            assert status == 200, body
            assert body["rows"] == [[k, str(sum(21_000 + n for n in range(k)))]]  # type: ignore[index]
        for sql, response in zip((STACK_BREAKER, CPU_HOG) * 2, crashed, strict=True):
            error = response.json()["error"]
            if sql is STACK_BREAKER:
                assert (response.status_code, error["code"]) == (500, "engine_crashed")
                assert "SIGSEGV" in error["message"]
            else:
                assert (response.status_code, error["code"]) == (408, "cpu_limit")
                assert "CPU time limit of 2 s" in error["message"]

        # each crash cost one worker, replaced in the background; the pool is whole again
        _wait_for_workers(workers, replaced=4)
        assert not first_pids & set(workers.pids())
        status, body = good(100)
        assert status == 200 and body["rows"] == [[100, str(sum(21_000 + n for n in range(100)))]]  # type: ignore[index]

    codes = sorted(r["error_code"] for r in audit_rows(dbs) if r["error_code"])
    assert codes == ["cpu_limit", "cpu_limit", "engine_crashed", "engine_crashed"]


def test_a_hung_engine_is_killed_and_replaced(
    settings: Settings, dbs: Databases, store: RecordingStore, tmp_path: Path
) -> None:
    publish(settings, store, tmp_path, blocks_table(0, 10), end=10)
    cfg = settings.model_copy(
        update={"query_workers": 1, "query_timeout_seconds": 1.0, "query_cpu_seconds": 0}
    )
    token = local_user_token(cfg)
    app = create_app(cfg, dbs, store, hot_sources=None)
    app.state.service.workers.kill_grace_seconds = 1.0
    with serving(app) as client:
        workers = app.state.service.workers
        (pid,) = workers.pids()
        # good queries first: the worker builds a warm sandbox for them in the background
        for _ in range(2):
            assert post(client, token, {"sql": "SELECT count(*) FROM blocks"}).status_code == 200
        deadline = time.monotonic() + 30
        while not list(warm_root(workers.config).glob(f"{pid}-*")):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        started = time.monotonic()
        response = post(client, token, {"sql": HANG})
        assert time.monotonic() - started < 20
        assert response.status_code == 408, response.text
        assert response.json()["error"]["code"] == "query_timeout"
        assert "engine process was replaced" in response.json()["error"]["message"]
        _wait_for_workers(workers, replaced=1)
        assert not list(warm_root(workers.config).glob(f"{pid}-*"))  # the killed one's files
        ok = post(client, token, {"sql": "SELECT count(*) FROM blocks"})
        assert ok.status_code == 200 and ok.json()["rows"] == [[10]]


def test_sql_size_and_nesting_are_capped_before_parsing(
    settings: Settings, dbs: Databases, store: RecordingStore, tmp_path: Path
) -> None:
    publish(settings, store, tmp_path, blocks_table(0, 10), end=10)
    cfg = settings.model_copy(
        update={"query_workers": 1, "query_max_sql_bytes": 2000, "query_max_nesting_depth": 20}
    )
    token = local_user_token(cfg)
    for gate in (True, False):
        with serving(create_app(cfg, dbs, store, hot_sources=None, gate=gate)) as client:
            long = post(client, token, {"sql": "SELECT 1" + " " * 2000, "datasets": ["blocks"]})
            assert long.status_code == 413 and long.json()["error"]["code"] == "sql_too_large"
            deep = "SELECT " + "(" * 21 + "1" + ")" * 21
            response = post(client, token, {"sql": deep, "datasets": ["blocks"]})
            assert response.status_code == 400, response.text
            assert response.json()["error"] == {
                "code": "sql_too_deep",
                "message": "SQL nests deeper than 20 levels",
            }
            fine = "SELECT " + "(" * 20 + "1" + ")" * 20 + " FROM blocks LIMIT 1"
            response = post(client, token, {"sql": fine, "datasets": ["blocks"]})
            assert response.status_code == 200, response.text
