"""The Query Service end to end: real Postgres, real DuckDB, Parquet in a LocalStore and in
moto's S3 server, the Starlette app through its test client."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uvicorn
from starlette.applications import Starlette

from tests.unit.test_sql_gate import HOSTILE
from trace_core.datasets import ids
from trace_core.datasets.commit import describe_parquet, register_version
from trace_core.datasets.manifest import DatasetManifest, ManifestFile
from trace_core.datasets.registry import VersionRecord
from trace_core.db.connection import Databases
from trace_core.errors import QueryError, RetryableError
from trace_core.query.app import create_app
from trace_core.query.attach import HotSource
from trace_core.query.client import local_user_token, query_http
from trace_core.query.tokens import DatasetPin, issue_task_token, issue_user_token
from trace_core.settings import Settings
from trace_core.storage.local import LocalStore
from trace_core.storage.s3 import S3Store
from trace_core.tasks.lifecycle import claim, complete_failure, create_task
from trace_core.tasks.retry import RetryPolicy

CHAIN = 1


def blocks_table(start: int, end: int, *, gas: int = 21_000) -> pa.Table:
    """A cryo-like blocks table for [start, end)."""
    numbers = list(range(start, end))
    return pa.table(
        {
            "block_hash": pa.array([n.to_bytes(32, "big") for n in numbers], pa.binary()),
            "author": pa.array([b"\x11" * 20 for _ in numbers], pa.binary()),
            "block_number": pa.array(numbers, pa.uint32()),
            "gas_used": pa.array([gas + n for n in numbers], pa.uint64()),
            "extra_data": pa.array([b"" for _ in numbers], pa.binary()),
            "timestamp": pa.array([1_700_000_000 + n for n in numbers], pa.uint32()),
            "base_fee_per_gas": pa.array([7 for _ in numbers], pa.uint64()),
            "chain_id": pa.array([CHAIN for _ in numbers], pa.uint64()),
        }
    )


def publish(
    settings: Settings,
    store: Any,
    tmp: Path,
    table: pa.Table,
    *,
    key: str = "blocks",
    start: int = 0,
    end: int = 100,
    config: str = "cryo_ingest.blocks:v1",
    files: int = 1,
    fake: bool = False,
) -> VersionRecord:
    """Write Parquet + manifest under the version prefix and register the version."""
    duid = ids.dataset_uuid(settings.org_id, CHAIN, key)
    version = ids.dataset_version(duid, config, CHAIN, start, end, fake=fake)
    prefix = ids.version_prefix(CHAIN, duid, start, end, version)
    entries = []
    schema = None
    step = max(1, table.num_rows // files)
    for i in range(files):
        part = table.slice(i * step, table.num_rows - i * step if i == files - 1 else step)
        path = tmp / f"{version}-{i}.parquet"
        pq.write_table(part, path)
        info = describe_parquet(path)
        schema = info.schema
        data = path.read_bytes()
        obj = f"{prefix}{key}_{start:08}_{end:08}_{i}.parquet"
        store.put_file(obj, path)
        entries.append(ManifestFile(obj, len(data), hashlib.sha256(data).hexdigest(), info.rows))
    assert schema is not None
    manifest = DatasetManifest(
        dataset_uuid=duid, dataset_version=version, chain_id=CHAIN, dataset_key=key,
        range_start=start, range_end=end, config_hash=config, schema=schema, files=tuple(entries),
        fake=fake,
    )  # fmt: skip
    store.put_bytes(ids.manifest_key(prefix), manifest.to_json())
    with psycopg.connect(settings.state_url.get_secret_value()) as conn:  # type: ignore[union-attr]
        committed = register_version(
            conn, manifest, org_id=settings.org_id, storage_prefix=prefix,
            manifest_key=ids.manifest_key(prefix),
        )  # fmt: skip
    return committed.record


def pin(rec: VersionRecord) -> DatasetPin:
    return DatasetPin.of(rec)


def audit_rows(dbs: Databases, *, settled: bool = True) -> list[dict[str, Any]]:
    """The audit table; ``settled``: once no row is 'started' any more (a durable query's
    outcome lands just after its answer, off the answer's path), within 30 s."""
    deadline = time.monotonic() + 30
    with psycopg.connect(dbs.data_url, row_factory=psycopg.rows.dict_row) as conn:
        while True:
            rows = conn.execute("SELECT * FROM data.query_audit ORDER BY created_at").fetchall()
            if not settled or all(r["outcome"] != "started" for r in rows):
                return rows
            assert time.monotonic() < deadline, "query audit outcomes never landed"
            time.sleep(0.01)


def post(
    client: httpx.Client, token: str | None, body: dict[str, Any], path: str = "/v1/query"
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post(path, json=body, headers=headers)


@contextlib.contextmanager
def serving(app: Starlette) -> Iterator[httpx.Client]:
    """Run ``app`` under a real uvicorn on a free loopback port; yield a client for it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "query service did not start"
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


class RecordingStore:
    """A real LocalStore that records which keys were read (to prove what was touched)."""

    def __init__(self, inner: LocalStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.reads: list[str] = []

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        self.reads.append(key)
        return self.inner.get_bytes(key, max_bytes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def store(trace_home: Path) -> RecordingStore:
    return RecordingStore(LocalStore(trace_home / "objects"))


@pytest.fixture
def client(settings: Settings, dbs: Databases, store: RecordingStore) -> Iterator[httpx.Client]:
    with serving(create_app(settings, dbs, store, hot_sources=None)) as c:
        yield c


@pytest.fixture
def blocks(settings: Settings, store: RecordingStore, tmp_path: Path) -> VersionRecord:
    return publish(settings, store, tmp_path, blocks_table(0, 100))


@pytest.fixture
def logs(settings: Settings, store: RecordingStore, tmp_path: Path) -> VersionRecord:
    """A ten-row ``logs`` dataset next to ``blocks``."""
    return publish(
        settings,
        store,
        tmp_path,
        blocks_table(0, 10),
        key="logs",
        config="cryo_ingest.logs:v1",
        end=10,
    )


def test_health_and_auth(
    client: httpx.Client, settings: Settings, dbs: Databases, blocks: VersionRecord
) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    body = {"sql": "SELECT 1"}
    assert post(client, None, body).status_code == 401
    response = client.post("/v1/query", json=body, headers={"Authorization": "Basic abc"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_invalid"
    assert post(client, "garbage", body).status_code == 401
    task_token = issue_task_token(settings, uuid.uuid4(), 1, [pin(blocks)])
    assert post(client, task_token, body).status_code == 401  # a task token is no user token
    assert post(client, local_user_token(settings), body, "/v1/task-query").status_code == 401
    assert audit_rows(dbs) == []


def test_query_answers_and_audits_without_sql(
    client: httpx.Client, settings: Settings, dbs: Databases, blocks: VersionRecord
) -> None:
    sql = "SELECT count(*) AS n, min(block_number) AS lo, max(gas_used) AS g, any_value(block_hash) IS NOT NULL AS h FROM blocks"
    response = post(client, local_user_token(settings), {"sql": sql})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["rows"] == [[100, 0, str(21_000 + 99), True]]
    assert [c["name"] for c in body["columns"]] == ["n", "lo", "g", "h"]
    assert body["columns"][2]["type"] == "UBIGINT"
    assert (body["row_count"], body["truncated"], body["export"]) == (1, False, None)
    hashes = post(
        client,
        local_user_token(settings),
        {"sql": "SELECT block_hash FROM blocks ORDER BY 1 LIMIT 1"},
    )
    assert hashes.json()["rows"] == [["0x" + "00" * 32]]
    url = post(
        client, local_user_token(settings), {"sql": "SELECT 'https://example.com/x.parquet' AS u"}
    )
    assert url.status_code == 200 and url.json()["rows"] == [["https://example.com/x.parquet"]]

    rows = audit_rows(dbs)
    assert len(rows) == 3
    first = rows[0]
    assert str(first["query_id"]) == body["query_id"]
    assert first["user_sub"] == "user:local" and first["task_id"] is None
    assert first["outcome"] == "ok" and first["rows"] == 1 and first["error_code"] is None
    assert first["sql_sha256"] == hashlib.sha256(sql.encode()).hexdigest()
    assert first["datasets"] == [
        {
            "relation": "blocks",
            "dataset_uuid": str(blocks.dataset_uuid),
            "dataset_version": str(blocks.dataset_version),
        }
    ]
    assert rows[2]["datasets"] == []  # the URL literal query read no relation
    assert "SELECT" not in json.dumps([{k: str(v) for k, v in r.items()} for r in rows])


def test_hostile_corpus_is_refused_without_touching_storage(
    client: httpx.Client,
    settings: Settings,
    dbs: Databases,
    store: RecordingStore,
    blocks: VersionRecord,
) -> None:
    token = local_user_token(settings)
    for sql in HOSTILE:
        response = post(client, token, {"sql": sql})
        assert response.status_code in (400, 413), (sql[:80], response.text)
        assert response.json()["error"]["code"].startswith("sql_")
    assert store.reads == []
    rows = audit_rows(dbs)
    assert len(rows) == len(HOSTILE)
    assert {r["outcome"] for r in rows} == {"rejected"}
    assert all(r["error_code"].startswith("sql_") for r in rows)


def test_grants_and_registry(
    client: httpx.Client,
    settings: Settings,
    dbs: Databases,
    store: RecordingStore,
    tmp_path: Path,
    blocks: VersionRecord,
    logs: VersionRecord,
) -> None:
    only_logs = issue_user_token(settings, sub="user:alice", datasets=["logs"])
    assert post(client, only_logs, {"sql": "SELECT count(*) FROM logs"}).json()["rows"] == [[10]]
    denied = post(client, only_logs, {"sql": "SELECT 1", "datasets": ["blocks"]})
    assert denied.status_code == 403
    unknown = post(client, local_user_token(settings), {"sql": "SELECT 1", "datasets": ["nope"]})
    assert unknown.status_code == 403
    other_org = issue_user_token(settings, sub="user:eve", org_id=uuid.uuid4())
    refused = post(client, other_org, {"sql": "SELECT count(*) FROM blocks"})
    assert (
        refused.status_code == 400 and refused.json()["error"]["code"] == "sql_forbidden_relation"
    )
    assert (
        post(client, local_user_token(settings), {"sql": "SELECT 1", "job": "nope"}).status_code
        == 404
    )
    # only the successful logs query and the refused-by-gate query are audited
    assert [r["outcome"] for r in audit_rows(dbs)] == ["ok", "rejected"]


def _running_task(settings: Settings) -> tuple[uuid.UUID, Any]:
    task_id = uuid.uuid4()
    with psycopg.connect(settings.state_url.get_secret_value()) as conn:  # type: ignore[union-attr]
        create_task(conn, task_id=task_id, operator="query_test", payload={})
        lease = claim(conn, task_id, lease_seconds=60)
    return task_id, lease


def test_task_token_pinned_to_v1_keeps_reading_v1(
    client: httpx.Client, settings: Settings, dbs: Databases, store: RecordingStore, tmp_path: Path
) -> None:
    v1 = publish(settings, store, tmp_path, blocks_table(0, 100, gas=1))
    task_id, lease = _running_task(settings)
    token = issue_task_token(settings, task_id, lease.attempt, [pin(v1)])
    sql = {"sql": "SELECT min(gas_used) FROM blocks"}
    assert post(client, token, sql, "/v1/task-query").json()["rows"] == [["1"]]

    v2 = publish(
        settings, store, tmp_path, blocks_table(0, 100, gas=1000), config="cryo_ingest.blocks:v2"
    )
    assert v2.dataset_version != v1.dataset_version
    assert post(client, local_user_token(settings), sql).json()["rows"] == [["1000"]]
    assert post(client, token, sql, "/v1/task-query").json()["rows"] == [["1"]]

    task_rows = [r for r in audit_rows(dbs) if r["task_id"] is not None]
    assert [(r["task_id"], r["attempt"]) for r in task_rows] == [(task_id, 1), (task_id, 1)]
    assert {r["datasets"][0]["dataset_version"] for r in task_rows} == {str(v1.dataset_version)}

    # a pin the registry does not hold is refused
    forged = DatasetPin(
        dataset_uuid=v1.dataset_uuid, dataset_version=uuid.uuid4(), manifest_key=v1.manifest_key
    )
    bad = issue_task_token(settings, task_id, lease.attempt, [forged])
    assert post(client, bad, sql, "/v1/task-query").status_code == 403
    assert len(audit_rows(dbs)) == 3


def test_stale_expired_tampered_task_tokens(
    client: httpx.Client, settings: Settings, dbs: Databases, blocks: VersionRecord
) -> None:
    task_id, lease = _running_task(settings)
    good = issue_task_token(settings, task_id, lease.attempt, [pin(blocks)])
    expired = issue_task_token(
        settings, task_id, lease.attempt, [pin(blocks)], ttl=5, now=1_000_000
    )
    header, payload, sig = good.split(".")
    tampered = f"{header}.{payload[:-2]}xx.{sig}"
    body = {"sql": "SELECT count(*) FROM blocks"}
    assert post(client, expired, body, "/v1/task-query").status_code == 401
    assert post(client, tampered, body, "/v1/task-query").status_code == 401
    with psycopg.connect(settings.state_url.get_secret_value()) as conn:  # type: ignore[union-attr]
        complete_failure(conn, lease, error="boom", fatal=False, policy=RetryPolicy(base_seconds=0))
        assert claim(conn, task_id, lease_seconds=60).attempt == 2
    stale = post(client, good, body, "/v1/task-query")
    assert stale.status_code == 403 and stale.json()["error"]["code"] == "stale_attempt"
    unknown_task = issue_task_token(settings, uuid.uuid4(), 1, [pin(blocks)])
    assert post(client, unknown_task, body, "/v1/task-query").status_code == 403
    assert audit_rows(dbs) == []


def test_rotated_key_accepted_during_overlap(
    settings: Settings, dbs: Databases, store: RecordingStore, blocks: VersionRecord
) -> None:
    old = local_user_token(settings)  # signed with k1
    body = {"sql": "SELECT count(*) FROM blocks"}
    overlap = settings.model_copy(update={"jwt_kid": "k2", "jwt_next_kid": "k1"})
    with serving(create_app(overlap, dbs, store, hot_sources=None)) as c:
        assert post(c, old, body).status_code == 200
        assert post(c, local_user_token(overlap), body).status_code == 200
    retired = settings.model_copy(update={"jwt_kid": "k2"})
    with serving(create_app(retired, dbs, store, hot_sources=None)) as c:
        assert post(c, old, body).status_code == 401
        assert post(c, local_user_token(overlap), body).status_code == 200


def test_timeout_truncation_and_export(
    settings: Settings, dbs: Databases, store: RecordingStore, tmp_path: Path
) -> None:
    publish(settings, store, tmp_path, blocks_table(0, 200), end=200)
    tight = settings.model_copy(update={"query_timeout_seconds": 1.0, "query_inline_max_rows": 50})
    token = local_user_token(tight)
    with serving(create_app(tight, dbs, store, hot_sources=None)) as c:
        slow = "SELECT sum(a.gas_used * b.gas_used + c.gas_used) FROM blocks a, blocks b, blocks c, blocks d, blocks e"
        response = post(c, token, {"sql": slow})
        assert response.status_code == 408, response.text
        assert response.json()["error"]["code"] == "query_timeout"

        few = post(
            c, token, {"sql": "SELECT block_number FROM blocks ORDER BY 1", "max_rows": 5}
        ).json()
        assert few["rows"] == [[0], [1], [2], [3], [4]] and few["truncated"] is True

        big = post(c, token, {"sql": "SELECT * FROM blocks ORDER BY block_number"}).json()
        assert big["rows"] == [] and big["row_count"] == 200 and not big["truncated"]
        export = big["export"]
        assert export["key"] == f"results/{settings.org_id}/{big['query_id']}/result.parquet"
        assert export["row_count"] == 200 and "presigned_url" not in export
        table = pq.read_table(Path(export["uri"].removeprefix("file://")))
        assert table.num_rows == 200 and table.column("block_number").to_pylist() == list(
            range(200)
        )
    rows = audit_rows(dbs)
    assert [(r["outcome"], r["error_code"]) for r in rows] == [
        ("failed", "query_timeout"),
        ("ok", None),
        ("ok", None),
    ]
    assert rows[2]["export_key"] == export["key"] and rows[2]["rows"] == 200


def _tamper(store: Any, rec: VersionRecord, change: Any) -> None:
    manifest = json.loads(store.get_bytes(rec.manifest_key))
    change(manifest)
    store.inner.put_bytes(rec.manifest_key, json.dumps(manifest).encode())


def test_bad_manifests_are_refused(
    settings: Settings, dbs: Databases, store: RecordingStore, tmp_path: Path
) -> None:
    def outside(m: dict[str, Any]) -> None:
        evil = m["files"][0]["key"].replace("/", "-evil/", 4)
        store.inner.put_bytes(evil, store.get_bytes(m["files"][0]["key"]))
        m["files"][0]["key"] = evil
        m["parquet_keys"] = [evil]

    cases = {
        "outside": outside,
        "version": lambda m: m.update(dataset_version=str(uuid.uuid4())),
        "unknown": lambda m: m.update(extra_field=1),
        "notparquet": lambda m: (
            m["files"][0].update(key=m["files"][0]["key"] + ".csv"),
            m.update(parquet_keys=[m["files"][0]["key"]]),
        ),
        "huge": lambda m: m.update(schema=m["schema"] * 200),
    }
    records = {}
    for name, change in cases.items():
        rec = publish(
            settings,
            store,
            tmp_path,
            blocks_table(0, 10),
            key=name,
            config=f"cryo_ingest.{name}:v1",
            end=10,
        )
        _tamper(store, rec, change)
        records[name] = rec
    many = publish(
        settings,
        store,
        tmp_path,
        blocks_table(0, 10),
        key="many",
        config="cryo_ingest.many:v1",
        end=10,
        files=2,
    )
    linked = publish(
        settings,
        store,
        tmp_path,
        blocks_table(0, 10),
        key="linked",
        config="cryo_ingest.linked:v1",
        end=10,
    )
    outside_file = tmp_path / "outside.parquet"
    pq.write_table(blocks_table(500, 510), outside_file)
    link = Path(
        store.duckdb_uri(json.loads(store.get_bytes(linked.manifest_key))["parquet_keys"][0])
    )
    link.unlink()
    link.symlink_to(outside_file)

    capped = settings.model_copy(
        update={"query_manifest_max_bytes": 8 * 1024, "query_manifest_max_files": 1}
    )
    token = local_user_token(capped)
    expected = {
        "outside": 422,
        "version": 422,
        "unknown": 422,
        "notparquet": 422,
        "huge": 413,
        "many": 422,
        "linked": 422,
    }
    with serving(create_app(capped, dbs, store, hot_sources=None)) as c:
        for name, status in expected.items():
            response = post(c, token, {"sql": f"SELECT count(*) FROM {name}"})
            assert response.status_code == status, (name, response.text)
    assert {r["outcome"] for r in audit_rows(dbs)} == {"rejected"}
    assert many.file_count == 2


def test_sandbox_alone_refuses_reads_outside_the_grant(
    settings: Settings, dbs: Databases, store: RecordingStore, tmp_path: Path, blocks: VersionRecord
) -> None:
    secret = publish(
        settings,
        store,
        tmp_path,
        blocks_table(0, 10),
        key="transactions",
        config="cryo_ingest.transactions:v1",
        end=10,
    )
    secret_file = store.duckdb_uri(
        json.loads(store.get_bytes(secret.manifest_key))["parquet_keys"][0]
    )
    copy_target = tmp_path / "stolen.csv"
    attach_target = tmp_path / "other.duckdb"
    attacks = [
        f"SELECT * FROM read_parquet('{secret_file}')",
        f"SELECT * FROM '{secret_file}'",
        f"SELECT count(*) FROM read_parquet('{store.inner.root}/cryo/**/*.parquet')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM read_parquet('https://example.com/x.parquet')",
        f"ATTACH '{attach_target}' AS other",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET threads = 64",
        "RESET lock_configuration",
        f"COPY (SELECT * FROM blocks) TO '{copy_target}'",
        f"EXPORT DATABASE '{tmp_path / 'exported'}'",
    ]
    with serving(create_app(settings, dbs, store, hot_sources=None, gate=False)) as c:
        token = local_user_token(settings)
        granted = post(c, token, {"sql": "SELECT count(*) FROM blocks", "datasets": ["blocks"]})
        assert granted.json()["rows"] == [[100]]
        for sql in attacks:
            response = post(c, token, {"sql": sql, "datasets": ["blocks"]})
            assert response.status_code in (400, 403), (sql, response.text)
    assert not copy_target.exists() and not attach_target.exists()
    assert not (tmp_path / "exported").exists()
    assert Path(secret_file).stat().st_mode & 0o222 == 0  # dataset files are read-only


def test_hot_and_cold_union_equals_both_queried_separately(
    settings: Settings, dbs: Databases, store: RecordingStore, blocks: VersionRecord
) -> None:
    with psycopg.connect(dbs.data_url) as conn:
        for n in range(100, 110):
            conn.execute(
                'INSERT INTO data.hot_blocks (chain_id, block_number, block_hash, parent_hash, gas_used, "timestamp") '
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    CHAIN,
                    n,
                    n.to_bytes(32, "big"),
                    (n - 1).to_bytes(32, "big"),
                    50_000 + n,
                    1_700_000_000 + n,
                ),
            )
        # a row the cold data already covers is not served twice
        conn.execute(
            "INSERT INTO data.hot_blocks (chain_id, block_number, block_hash, parent_hash, gas_used) "
            "VALUES (%s, 99, %s, %s, 1)",
            (CHAIN, b"\x99" * 32, b"\x98" * 32),
        )
        hot_n, hot_gas = conn.execute(
            "SELECT count(*), sum(gas_used) FROM data.hot_blocks WHERE block_number >= 100"
        ).fetchone()
    sql = {"sql": "SELECT count(*) AS n, sum(gas_used) AS g, max(block_number) AS hi FROM blocks"}
    joined = {
        "sql": "SELECT count(*) FROM blocks a JOIN blocks b USING (block_number) WHERE a.block_hash = b.block_hash"
    }
    token = local_user_token(settings)
    with serving(create_app(settings, dbs, store, hot_sources=None)) as cold_only:
        cold_n, cold_gas, cold_hi = post(cold_only, token, sql).json()["rows"][0]
    with serving(create_app(settings, dbs, store)) as both:
        answer = post(both, token, sql)
        assert answer.status_code == 200, answer.text
        n, gas, hi = answer.json()["rows"][0]
        assert post(both, token, joined).json()["rows"] == [[cold_n + hot_n]]
        typed = post(
            both,
            token,
            {
                "sql": "SELECT typeof(gas_used), typeof(block_hash) FROM blocks WHERE block_number = 105"
            },
        )
        assert typed.json()["rows"] == [["UBIGINT", "BLOB"]]
    assert (n, int(gas), hi) == (cold_n + hot_n, int(cold_gas) + int(hot_gas), 109)
    assert cold_hi == 99


def test_generic_hot_source_hook(
    settings: Settings, dbs: Databases, store: RecordingStore, blocks: VersionRecord
) -> None:
    """Any Postgres table works as a hot source; columns it lacks come back NULL."""
    with psycopg.connect(dbs.data_url) as conn:
        conn.execute("CREATE TABLE data.my_hot (block_number bigint, gas_used numeric, note text)")
        conn.execute("INSERT INTO data.my_hot SELECT n, 7, 'x' FROM generate_series(95, 104) AS n")

    def hook(relation: str, recs: Any) -> list[HotSource]:
        end = max(r.range_end for r in recs)
        return [HotSource(dbs.data_url, "data.my_hot", end)] if relation == "blocks" else []

    sql = {
        "sql": "SELECT count(*), count(block_hash), sum(gas_used) FILTER (WHERE block_number >= 100) FROM blocks"
    }
    with serving(create_app(settings, dbs, store, hot_sources=hook)) as c:
        response = post(c, local_user_token(settings), sql)
        assert response.status_code == 200, response.text
        assert response.json()["rows"] == [[105, 100, "35"]]
        columns = post(c, local_user_token(settings), {"sql": "SELECT * FROM blocks LIMIT 0"})
        assert "note" not in [col["name"] for col in columns.json()["columns"]]


def test_s3_store_reads_exports_and_refuses_other_keys(
    settings: Settings, dbs: Databases, moto_server_url: str, tmp_path: Path
) -> None:
    bucket = f"qs-{uuid.uuid4().hex[:12]}"
    s3 = S3Store(bucket, "trace", endpoint_url=moto_server_url)
    s3.ensure_bucket()
    cfg = settings.model_copy(
        update={"s3_endpoint_url": moto_server_url, "query_inline_max_rows": 20}
    )
    publish(cfg, s3, tmp_path, blocks_table(0, 50), end=50)
    other = publish(
        cfg, s3, tmp_path, blocks_table(0, 5), key="logs", config="cryo_ingest.logs:v1", end=5
    )
    other_uri = s3.duckdb_uri(json.loads(s3.get_bytes(other.manifest_key))["parquet_keys"][0])
    token = local_user_token(cfg)
    with serving(create_app(cfg, dbs, s3, hot_sources=None)) as c:
        small = post(c, token, {"sql": "SELECT count(*), sum(block_number) FROM blocks"})
        assert small.status_code == 200, small.text
        assert small.json()["rows"] == [[50, "1225"]]
        big = post(c, token, {"sql": "SELECT * FROM blocks"}).json()
        assert (
            big["export"]["uri"]
            == f"s3://{bucket}/trace/results/{settings.org_id}/{big['query_id']}/result.parquet"
        )
        fetched = httpx.get(big["export"]["presigned_url"])
        assert fetched.status_code == 200
        assert pq.read_table(pa.BufferReader(fetched.content)).num_rows == 50
    with serving(create_app(cfg, dbs, s3, hot_sources=None, gate=False)) as c:
        for sql in (
            f"SELECT * FROM '{other_uri}'",
            f"SELECT * FROM read_parquet('s3://{bucket}/trace/cryo/*/*/*/*/*.parquet')",
            f"COPY (SELECT 1) TO 's3://{bucket}/trace/evil.parquet'",
        ):
            response = post(c, token, {"sql": sql, "datasets": ["blocks"]})
            assert response.status_code == 403, (sql, response.text)
        # The sandbox alone still lists the (redacted) S3 secret: the gate must refuse it.
        introspect = {"sql": "SELECT secret_string FROM duckdb_secrets()", "datasets": ["blocks"]}
        leaked = post(c, token, introspect)
        assert leaked.status_code == 200 and "secret=redacted" in leaked.text
    assert not s3.exists("evil.parquet")
    with serving(create_app(cfg, dbs, s3, hot_sources=None)) as c:
        assert post(c, token, introspect).status_code == 400


def test_job_restricts_relations(
    client: httpx.Client,
    settings: Settings,
    dbs: Databases,
    store: RecordingStore,
    tmp_path: Path,
    blocks: VersionRecord,
    logs: VersionRecord,
) -> None:
    job_id = uuid.uuid4()
    with psycopg.connect(settings.state_url.get_secret_value()) as conn:  # type: ignore[union-attr]
        conn.execute(
            "INSERT INTO state.chain_sync_jobs (job_id, org_id, name, chain_id, mode, from_block, to_block, yaml_hash, spec) "
            "VALUES (%s, %s, 'mini', %s, 'fixed_target', 0, 100, 'h', '{}')",
            (job_id, settings.org_id, CHAIN),
        )
        conn.execute(
            "INSERT INTO state.chain_sync_streams (job_id, dataset_key, cryo_dataset_name, rpc_pool, chunk_size, max_inflight, config_hash, dataset_uuid) "
            "VALUES (%s, 'blocks', 'blocks', 'standard', 100, 1, 'cryo_ingest.blocks:v1', %s)",
            (job_id, blocks.dataset_uuid),
        )
    token = local_user_token(settings)
    assert post(client, token, {"sql": "SELECT count(*) FROM logs"}).status_code == 200
    assert post(client, token, {"sql": "SELECT count(*) FROM blocks", "job": "mini"}).json()[
        "rows"
    ] == [[100]]
    refused = post(client, token, {"sql": "SELECT count(*) FROM logs", "job": "mini"})
    assert (
        refused.status_code == 400 and refused.json()["error"]["code"] == "sql_forbidden_relation"
    )


def test_http_client_helpers(
    settings: Settings, dbs: Databases, store: RecordingStore, blocks: VersionRecord
) -> None:
    with serving(create_app(settings, dbs, store, hot_sources=None)) as c:
        cfg = settings.model_copy(update={"query_url": str(c.base_url)})
        answer = query_http(cfg, "SELECT count(*) AS n FROM blocks")
        assert answer["rows"] == [[100]] and answer["columns"] == [{"name": "n", "type": "BIGINT"}]
        with pytest.raises(QueryError) as refused:
            query_http(cfg, "SELECT * FROM read_parquet('x')")
        assert refused.value.code == "sql_table_function" and refused.value.fields["status"] == 400
        with pytest.raises(QueryError) as unauthorized:
            query_http(cfg, "SELECT 1", token="not-a-token")
        assert unauthorized.value.code == "token_invalid"
    with pytest.raises(QueryError) as down:
        query_http(cfg, "SELECT 1")
    assert down.value.code == "service_unreachable"


def test_serve_runs_the_configured_service(settings: Settings, blocks: VersionRecord) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = {
        **os.environ,
        "TRACE_HOME": str(settings.home),
        "TRACE_STATE_URL": settings.state_url.get_secret_value(),  # type: ignore[union-attr]
        "TRACE_DATA_URL": settings.data_url.get_secret_value(),  # type: ignore[union-attr]
        "TRACE_QUERY_PORT": str(port),
    }
    code = "from trace_core.query.app import serve; from trace_core.settings import load_settings; serve(load_settings())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        cfg = settings.model_copy(update={"query_port": port})
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "serve() did not come up"
            time.sleep(0.1)
        assert query_http(cfg, "SELECT count(*) FROM blocks")["rows"] == [[100]]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_worker_issues_per_task_tokens_at_claim(
    client: httpx.Client, settings: Settings, dbs: Databases, blocks: VersionRecord
) -> None:
    """Each claimed attempt gets its own token, pinned to its payload's grants only."""
    from trace_core.engine.execute import execute_task
    from trace_core.operators.base import Completion, OperatorContext, OperatorRegistry
    from trace_core.runtime import Runtime

    tokens: list[str] = []

    def reader(ctx: OperatorContext) -> Completion:
        tokens.append(ctx.capability_token)
        resp = post(
            client, ctx.capability_token, {"sql": "SELECT count(*) FROM blocks"}, "/v1/task-query"
        )
        if ctx.lease.attempt == 1 and ctx.lease.payload.get("grants"):
            raise RetryableError("first attempt fails on purpose")
        return Completion(outputs={"status": resp.status_code, "rows": resp.json().get("rows")})

    registry = OperatorRegistry()
    registry.register("reader", reader, queries=True)
    rt = Runtime(settings, dbs)
    granted, ungranted = uuid.uuid4(), uuid.uuid4()
    with rt.state() as conn, conn.transaction():
        grant = pin(blocks).model_dump(mode="json")
        create_task(conn, task_id=granted, operator="reader", payload={"grants": [grant]})
        create_task(conn, task_id=ungranted, operator="reader", payload={})
        conn.execute("UPDATE state.tasks SET next_run_at = now() - interval '1 hour'")

    assert execute_task(rt, granted, registry).status == "retry"
    with rt.state() as conn:
        conn.execute("UPDATE state.tasks SET next_run_at = now() WHERE task_id = %s", (granted,))
    second = execute_task(rt, granted, registry)
    assert second.outputs == {"status": 200, "rows": [[100]]}
    # attempt 1's token is stale once attempt 2 holds the task
    stale = post(client, tokens[0], {"sql": "SELECT 1 FROM blocks"}, "/v1/task-query")
    assert stale.status_code == 403

    # a task without grants is claimed with a token that reads nothing
    assert execute_task(rt, ungranted, registry).outputs == {"status": 400, "rows": None}

    bad = uuid.uuid4()
    with rt.state() as conn, conn.transaction():
        create_task(
            conn, task_id=bad, operator="reader", payload={"grants": [{"dataset_uuid": "x"}]}
        )
    outcome = execute_task(rt, bad, registry)
    assert outcome.status == "dead" and "grants" in (outcome.error or "")


def test_newer_narrower_version_replaces_only_its_own_blocks(
    client: httpx.Client, settings: Settings, store: RecordingStore, tmp_path: Path
) -> None:
    """An older version over [0, 300) and a newer one over [100, 200): every block is served
    once, the middle from the newer version, the rest from the older (no hole, no double)."""
    publish(settings, store, tmp_path, blocks_table(0, 300, gas=1), start=0, end=300)
    publish(
        settings, store, tmp_path, blocks_table(100, 200, gas=1_000_000),
        start=100, end=200, config="cryo_ingest.blocks:v2",
    )  # fmt: skip
    sql = {
        "sql": "SELECT count(*), count(DISTINCT block_number), min(block_number), max(block_number), "
        "count(*) FILTER (WHERE gas_used >= 1000000) FROM blocks"
    }
    resp = post(client, local_user_token(settings), sql)
    assert resp.status_code == 200, resp.text
    assert resp.json()["rows"] == [[300, 300, 0, 299, 100]]
    # the same files stay the only readable ones: a path outside the grant is still refused
    outside = post(
        client, local_user_token(settings), {"sql": "SELECT * FROM read_parquet('/etc/passwd')"}
    )
    assert outside.status_code == 400


def test_s3_reads_use_short_lived_credentials_scoped_to_the_granted_prefixes(
    settings: Settings, dbs: Databases, moto_server_url: str, tmp_path: Path
) -> None:
    """With a role configured, each query's DuckDB secret holds STS credentials whose session
    policy allows GetObject under the granted version prefixes only (moto records the policy;
    it does not enforce it, AWS and MinIO do)."""
    from moto.sts.models import sts_backends

    bucket = f"qs-{uuid.uuid4().hex[:12]}"
    s3 = S3Store(bucket, "trace", endpoint_url=moto_server_url)
    s3.ensure_bucket()
    role = "arn:aws:iam::123456789012:role/trace-query-reader"
    cfg = settings.model_copy(
        update={"s3_endpoint_url": moto_server_url, "query_s3_role_arn": role}
    )
    rec = publish(cfg, s3, tmp_path, blocks_table(0, 50), end=50)
    publish(cfg, s3, tmp_path, blocks_table(0, 5), key="logs", config="cryo_ingest.logs:v1", end=5)
    backend = sts_backends["123456789012"]["global"]
    before = len(backend.assumed_roles)
    token = local_user_token(cfg)
    with serving(create_app(cfg, dbs, s3, hot_sources=None, gate=False)) as c:
        body = {"sql": "SELECT secret_string FROM duckdb_secrets()", "datasets": ["blocks"]}
        resp = post(c, token, body)
        assert resp.status_code == 200, resp.text
        # the same grant again: served from the credential cache, no second AssumeRole
        assert post(c, token, body).status_code == 200
    assumed = backend.assumed_roles[before:]
    assert len(assumed) == 1 and assumed[0].role_arn == role
    policy = json.loads(assumed[0].policy)
    (statement,) = policy["Statement"]
    assert statement["Action"] == ["s3:GetObject"]
    assert statement["Resource"] == [f"arn:aws:s3:::{bucket}/trace/{rec.storage_prefix}*"]
    secret = resp.json()["rows"][0][0]
    assert f"key_id={assumed[0].access_key_id}" in secret  # DuckDB holds the scoped keys


def test_scope_policy_widens_when_the_prefixes_do_not_fit() -> None:
    from trace_core.query.s3scope import MAX_POLICY_CHARS, scope_policy

    def uri(n: int) -> str:
        return f"s3://b/p/cryo/1/{uuid.UUID(int=n % 3)}/{n}_{n + 1}/{uuid.UUID(int=n)}/x.parquet"

    few = scope_policy([uri(1), uri(2)])["Statement"][0]["Resource"]
    assert few == sorted(
        f"arn:aws:s3:::b/{uri(n)[5:].split('/', 1)[1].rsplit('/', 1)[0]}/*" for n in (1, 2)
    )
    many = scope_policy([uri(n) for n in range(200)])
    assert len(json.dumps(many, separators=(",", ":"))) <= MAX_POLICY_CHARS
    assert many["Statement"][0]["Resource"] == sorted(
        f"arn:aws:s3:::b/p/cryo/1/{uuid.UUID(int=k)}/*" for k in range(3)
    )
    with pytest.raises(ValueError):
        scope_policy(["/local/file.parquet"])


def test_hot_rows_fill_holes_below_the_cold_boundary(
    settings: Settings, dbs: Databases, store: RecordingStore, tmp_path: Path
) -> None:
    """Cold [0, 100) and [200, 300); hot rows for 90..309: the query serves cold where cold
    covers a block and hot everywhere else, each block once, no hole."""
    publish(settings, store, tmp_path, blocks_table(0, 100), start=0, end=100)
    publish(settings, store, tmp_path, blocks_table(200, 300), start=200, end=300)
    with psycopg.connect(dbs.data_url) as conn:
        for n in range(90, 310):
            conn.execute(
                "INSERT INTO data.hot_blocks (chain_id, block_number, block_hash, parent_hash, gas_used) "
                "VALUES (%s, %s, %s, %s, %s)",
                (CHAIN, n, n.to_bytes(32, "big"), (n - 1).to_bytes(32, "big"), 1),
            )
    sql = {
        "sql": "SELECT count(*), count(DISTINCT block_number), min(block_number), max(block_number), "
        "count(*) FILTER (WHERE gas_used = 1) FROM blocks"
    }
    with serving(create_app(settings, dbs, store)) as c:
        resp = post(c, local_user_token(settings), sql)
    assert resp.status_code == 200, resp.text
    # 310 blocks; hot serves 100..199 and 300..309 (gas 1), cold the rest
    assert resp.json()["rows"] == [[310, 310, 0, 309, 110]]


def test_fake_versions_are_refused_unless_allowed(
    client: httpx.Client,
    settings: Settings,
    dbs: Databases,
    store: RecordingStore,
    blocks: VersionRecord,
    tmp_path: Path,
) -> None:
    """A relation served by a version TRACE_CRYO_MODE=fake made is refused (409 fake_data,
    audited as rejected) before any file is read; TRACE_QUERY_ALLOW_FAKE=true serves it."""
    fake = publish(settings, store, tmp_path, blocks_table(100, 150), start=100, end=150, fake=True)
    assert fake.fake and not blocks.fake
    token = local_user_token(settings)
    store.reads.clear()
    refused = post(client, token, {"sql": "SELECT count(*) FROM blocks"})
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "fake_data" and "TRACE_QUERY_ALLOW_FAKE=true" in error["message"]
    assert store.reads == []  # refused before any manifest or file was read
    assert audit_rows(dbs)[-1]["error_code"] == "fake_data"
    assert post(client, token, {"sql": "SELECT 1"}).status_code == 200  # no relation read
    allowed = settings.model_copy(update={"query_allow_fake": True})
    with serving(create_app(allowed, dbs, store, hot_sources=None)) as c:
        answer = post(c, token, {"sql": "SELECT count(*) FROM blocks"})
    assert answer.status_code == 200 and answer.json()["rows"] == [[150]]


def test_phases_are_observed_and_audit_commit_mode(
    settings: Settings, dbs: Databases, store: RecordingStore, blocks: VersionRecord
) -> None:
    """Each query reports where its time went (the benchmark's breakdown), through the worker
    too; the audit's commit waits for the WAL flush unless ``query_audit_durable`` is off."""
    from trace_core.query.service import QueryRequest, QueryService

    seen: list[dict[str, float]] = []
    service = QueryService(
        settings.model_copy(update={"query_workers": 1, "query_audit_durable": False}),
        dbs,
        store,
        hot_sources=None,
    )
    service.observer = seen.append
    service.open()
    try:
        started = time.perf_counter()
        body = service.query(
            "user", local_user_token(settings), QueryRequest(sql="SELECT count(*) FROM blocks")
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        with service.data.connection() as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
    finally:
        service.close()
    assert body["rows"] == [[100]] and len(audit_rows(dbs)) == 1
    (phases,) = seen
    expected = {
        "token",
        "registry",
        "gate",
        "attach",
        "engine",
        "sandbox",
        "duckdb",
        "render",
        "audit",
    }
    assert set(phases) == expected
    assert all(ms >= 0 for ms in phases.values())
    assert phases["sandbox"] + phases["duckdb"] <= phases["engine"]
    wall = sum(ms for name, ms in phases.items() if name not in ("sandbox", "duckdb"))
    assert wall <= elapsed_ms

    durable = QueryService(
        settings.model_copy(update={"query_workers": 0, "query_audit_durable": True}),
        dbs,
        store,
        hot_sources=None,
    )
    durable.open()
    try:
        with psycopg.connect(dbs.data_url) as plain:
            server_default = plain.execute("SHOW synchronous_commit").fetchone()
        with durable.data.connection() as conn:  # the server's own setting, untouched
            assert conn.execute("SHOW synchronous_commit").fetchone() == server_default
    finally:
        durable.close()
