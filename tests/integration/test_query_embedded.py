"""``trace-lite query`` without a Query Service: answered in process through the service's own
pipeline (token, grants, gate, sandbox worker, limits, audit). Real Postgres, real DuckDB,
Parquet in a LocalStore, and a real uvicorn service to compare against."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.integration.test_query_service import (
    RecordingStore,
    audit_rows,
    blocks_table,
    publish,
    serving,
)
from trace_core.cli.main import cli
from trace_core.datasets.registry import VersionRecord
from trace_core.db.connection import Databases
from trace_core.errors import QueryError
from trace_core.query.app import create_app
from trace_core.query.client import choose_route, query_embedded, query_http
from trace_core.runtime import Runtime
from trace_core.settings import Settings
from trace_core.storage.local import LocalStore

SAME_SQL = [
    "SELECT count(*) AS n, min(block_number) AS lo, max(gas_used) AS g FROM blocks",
    "SELECT block_number, block_hash, author FROM blocks ORDER BY block_number LIMIT 3",
    "SELECT timestamp % 7 AS k, count(*) AS c FROM blocks GROUP BY 1 ORDER BY 1",
    "SELECT NULL AS nothing, 'x' AS s, 1.5::DOUBLE AS d",
]
HOSTILE_SAMPLE = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "COPY blocks TO '/tmp/out.csv'",
    "ATTACH 'other.duckdb' AS other",
    "CREATE TABLE t(x INT)",
    "SELECT * FROM 'local.csv'",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def store(trace_home: Path) -> RecordingStore:
    # the same objects root the CLI's own LocalStore uses (TRACE_HOME/objects)
    return RecordingStore(LocalStore(trace_home / "objects"))


@pytest.fixture
def blocks(settings: Settings, store: RecordingStore, tmp_path: Path) -> VersionRecord:
    return publish(settings, store, tmp_path, blocks_table(0, 100))


@pytest.fixture
def no_service(trace_env: Runtime, monkeypatch: pytest.MonkeyPatch) -> int:
    """The CLI's default Query Service address points at a closed port."""
    port = free_port()
    monkeypatch.setenv("TRACE_QUERY_PORT", str(port))
    monkeypatch.delenv("TRACE_QUERY_URL", raising=False)
    return port


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(cli, ["query", *args], catch_exceptions=False)


def without_id(answer: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in answer.items() if k != "query_id"}


def test_embedded_answers_like_the_service_and_audits(
    settings: Settings, dbs: Databases, store: RecordingStore, blocks: VersionRecord
) -> None:
    with serving(create_app(settings, dbs, store, hot_sources=None)) as client:
        over_http = settings.model_copy(update={"query_url": str(client.base_url)})
        for sql in SAME_SQL:
            served = query_http(over_http, sql)
            local = query_embedded(settings, dbs, store, sql)
            assert without_id(local) == without_id(served), sql
            assert local["query_id"] != served["query_id"]
        few = query_embedded(settings, dbs, store, "SELECT block_number FROM blocks", max_rows=2)
        assert few["row_count"] == 2 and few["truncated"] is True
    rows = audit_rows(dbs)
    assert len(rows) == 2 * len(SAME_SQL) + 1
    assert {(r["user_sub"], r["outcome"]) for r in rows} == {("user:local", "ok")}
    embedded_ids = {str(r["query_id"]) for r in rows[1::2]}
    assert str(local["query_id"]) in embedded_ids
    assert rows[1]["datasets"][0]["dataset_version"] == str(blocks.dataset_version)


def test_embedded_refuses_hostile_sql_like_the_service_and_audits_it(
    settings: Settings, dbs: Databases, store: RecordingStore, blocks: VersionRecord
) -> None:
    with serving(create_app(settings, dbs, store, hot_sources=None)) as client:
        over_http = settings.model_copy(update={"query_url": str(client.base_url)})
        for sql in HOSTILE_SAMPLE:
            with pytest.raises(QueryError) as served:
                query_http(over_http, sql)
            with pytest.raises(QueryError) as local:
                query_embedded(settings, dbs, store, sql)
            got = (local.value.code, local.value.message, local.value.fields["status"])
            assert got == (served.value.code, served.value.message, served.value.fields["status"])
            assert got[0].startswith("sql_") and got[2] == 400, (sql, got)
    assert store.reads == []  # refused before any manifest was read
    rows = audit_rows(dbs)
    assert len(rows) == 2 * len(HOSTILE_SAMPLE)
    assert {r["outcome"] for r in rows} == {"rejected"}
    assert [r["error_code"] for r in rows[1::2]] == [r["error_code"] for r in rows[0::2]]


def test_embedded_checks_the_token_and_grants(
    settings: Settings, dbs: Databases, store: RecordingStore, blocks: VersionRecord
) -> None:
    with pytest.raises(QueryError) as bad_token:
        query_embedded(settings, dbs, store, "SELECT 1", token="not-a-token")
    assert bad_token.value.code == "token_invalid" and bad_token.value.fields["status"] == 401
    with pytest.raises(QueryError) as no_job:
        query_embedded(settings, dbs, store, "SELECT 1", job="nope")
    assert no_job.value.code == "job_not_found" and no_job.value.fields["status"] == 404
    with pytest.raises(QueryError) as bad_rows:
        query_embedded(settings, dbs, store, "SELECT 1", max_rows=0)
    assert bad_rows.value.code == "bad_request" and "max_rows" in bad_rows.value.message
    assert audit_rows(dbs) == []  # refused before the audit, as over HTTP


def test_route_choice(settings: Settings, dbs: Databases, store: RecordingStore) -> None:
    closed = settings.model_copy(update={"query_port": free_port()})
    route = choose_route(closed)
    assert route.mode == "embedded"
    assert route.notice == (
        f"no Query Service at http://127.0.0.1:{closed.query_port}; answering in process (embedded)"
    )
    assert choose_route(closed, "http").mode == "http"
    pinned = closed.model_copy(update={"query_url": f"http://127.0.0.1:{free_port()}"})
    assert choose_route(pinned).mode == "http"  # a set URL is never probed past
    assert choose_route(pinned, "embedded").mode == "embedded"
    with serving(create_app(settings, dbs, store, hot_sources=None)) as client:
        up = settings.model_copy(update={"query_port": client.base_url.port})
        assert choose_route(up).mode == "http"
    # another program on the port (answers, but not /healthz JSON) is no Query Service
    with serving(_not_a_service()) as client:
        other = settings.model_copy(update={"query_port": client.base_url.port})
        assert choose_route(other).mode == "embedded"


def _not_a_service() -> Starlette:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    return Starlette(routes=[Route("/healthz", hello)])


def test_cli_answers_in_process_and_says_so_on_stderr(
    no_service: int, dbs: Databases, blocks: VersionRecord
) -> None:
    sql = "SELECT count(*) AS n, max(block_number) AS hi FROM blocks"
    result = run_cli("--sql", sql, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip() == (
        f"no Query Service at http://127.0.0.1:{no_service}; answering in process (embedded)"
    )
    answer = json.loads(result.stdout)  # stdout holds the JSON and nothing else
    assert answer["rows"] == [[100, 99]]
    assert [c["name"] for c in answer["columns"]] == ["n", "hi"]
    [row] = audit_rows(dbs)
    assert str(row["query_id"]) == answer["query_id"] and row["outcome"] == "ok"

    refused = run_cli("--sql", "SELECT * FROM read_csv('/etc/passwd')")
    assert refused.exit_code == 1
    assert "answering in process" in refused.stderr
    assert "error: table functions are not allowed" in refused.stderr
    assert [r["outcome"] for r in audit_rows(dbs)] == ["ok", "rejected"]


def test_cli_prints_the_same_table_either_way_and_prefers_a_running_service(
    no_service: int,
    settings: Settings,
    dbs: Databases,
    store: RecordingStore,
    blocks: VersionRecord,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sql = "SELECT block_number, gas_used FROM blocks ORDER BY 1 LIMIT 4"
    embedded = run_cli("--sql", sql)
    assert embedded.exit_code == 0 and "answering in process" in embedded.stderr
    assert store.reads == []
    with serving(create_app(settings, dbs, store, hot_sources=None)) as client:
        monkeypatch.setenv("TRACE_QUERY_PORT", str(client.base_url.port))
        served = run_cli("--sql", sql)
        assert served.exit_code == 0 and served.stderr == ""
        assert store.reads != []  # the running service read the manifest
        assert served.stdout == embedded.stdout
        assert "4 row(s)" in served.stdout and "21003" in served.stdout

        reads = len(store.reads)
        forced = run_cli("--sql", sql, "--embedded", "--json")
        assert forced.exit_code == 0
        assert forced.stderr.strip() == "answering in process (embedded, --embedded)"
        assert json.loads(forced.stdout)["row_count"] == 4
        assert len(store.reads) == reads  # the service was not asked


def test_cli_with_a_dead_query_url_errors_instead_of_falling_back(
    no_service: int, dbs: Databases, blocks: VersionRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("TRACE_QUERY_URL", f"http://reader:s3cret@127.0.0.1:{port}")
    result = run_cli("--sql", "SELECT count(*) FROM blocks", "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert f"cannot reach the Query Service at http://127.0.0.1:{port}/v1/query" in result.stderr
    assert "s3cret" not in result.stderr and "reader" not in result.stderr
    assert "answering in process" not in result.stderr
    monkeypatch.delenv("TRACE_QUERY_URL")
    forced_http = run_cli("--sql", "SELECT 1", "--http")
    assert forced_http.exit_code == 1
    assert f"cannot reach the Query Service at http://127.0.0.1:{no_service}" in forced_http.stderr
    assert audit_rows(dbs) == []
