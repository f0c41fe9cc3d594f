"""Two orgs on one Postgres: an API key of org A never reads org B's datasets, hot rows or
exports, through any relation, export or error message, in process (``trace-lite query
--api-key``'s path) and over HTTP; task tokens stay pinned to their task's org.

Real Postgres roles and row-level security (the Query Service resolves grants and reads hot
rows as ``trace_tenant`` with the caller's org), real DuckDB, Parquet in a LocalStore.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.test_query_service import blocks_table, pin, post, publish, serving
from trace_core.db.connection import Databases, connect
from trace_core.errors import AccessDenied, SqlRejected, Unauthenticated
from trace_core.query.app import create_app
from trace_core.query.service import QueryRequest, QueryService
from trace_core.query.tokens import issue_task_token
from trace_core.settings import Settings
from trace_core.storage.local import LocalStore
from trace_core.tasks.lifecycle import claim, create_task
from trace_core.tenancy import create_key, create_org, revoke_key

CHAIN = 1


def _hot_blocks(dbs: Databases, org: uuid.UUID, start: int, end: int) -> None:
    with connect(dbs.data_url, autocommit=True) as conn:
        for n in range(start, end):
            conn.execute(
                "INSERT INTO data.hot_blocks (chain_id, block_number, block_hash, parent_hash,"
                " gas_used, org_id) VALUES (%s, %s, %s, %s, %s, %s)",
                (CHAIN, n, n.to_bytes(32, "big"), b"\0" * 32, 5, org),
            )


class Orgs:
    def __init__(self, settings: Settings, dbs: Databases, tmp: Path) -> None:
        self.store = LocalStore(settings.resolved_home() / "objects")
        with connect(dbs.state_url, autocommit=True) as conn:
            self.a = create_org(conn, "org-a").org_id
            self.b = create_org(conn, "org-b").org_id
            self.a_key = create_key(conn, self.a, "viewer")[1]
            self.b_key = create_key(conn, self.b, "viewer")[1]
        self.sa = settings.model_copy(update={"org_id": str(self.a)})
        self.sb = settings.model_copy(update={"org_id": str(self.b)})
        # org A: blocks 0..100 (gas 21000+n) and hot rows 100..110; org B: blocks 0..50 (gas
        # 1) and a `logs` dataset, with hot rows 200..210 (beyond A's cold end: only row-level
        # security keeps them out of A's `blocks`)
        self.a_blocks = publish(self.sa, self.store, tmp, blocks_table(0, 100), end=100)
        self.b_blocks = publish(self.sb, self.store, tmp, blocks_table(0, 50, gas=1), end=50)
        self.b_logs = publish(
            self.sb, self.store, tmp, blocks_table(0, 5), key="logs", end=5,
            config="cryo_ingest.logs:v1",
        )  # fmt: skip
        _hot_blocks(dbs, self.a, 100, 110)
        _hot_blocks(dbs, self.b, 200, 210)


@pytest.fixture
def orgs(settings: Settings, dbs: Databases, tmp_path: Path) -> Orgs:
    return Orgs(settings, dbs, tmp_path)


def _service(settings: Settings, dbs: Databases, store: LocalStore) -> QueryService:
    service = QueryService(settings.model_copy(update={"query_workers": 0}), dbs, store)
    service.open()
    return service


def _ask(service: QueryService, key: str, sql: str, **extra: Any) -> dict[str, Any]:
    return service.query("user", key, QueryRequest(sql=sql, **extra))


def test_api_keys_see_only_their_org(orgs: Orgs, settings: Settings, dbs: Databases) -> None:
    service = _service(settings, dbs, orgs.store)
    try:
        count = "SELECT count(*), min(block_number), max(block_number) FROM blocks"
        assert _ask(service, orgs.a_key, count)["rows"] == [[110, 0, 109]]
        assert _ask(service, orgs.b_key, count)["rows"] == [[60, 0, 209]]
        # org B's relation does not exist for A, with the same words as a made-up name
        with pytest.raises(AccessDenied) as theirs:
            _ask(service, orgs.a_key, "SELECT 1", datasets=["logs"])
        with pytest.raises(AccessDenied) as made_up:
            _ask(service, orgs.a_key, "SELECT 1", datasets=["nope"])
        assert str(theirs.value) == str(made_up.value).replace("nope", "logs")
        with pytest.raises(SqlRejected) as named:  # the gate: no such relation for A
            _ask(service, orgs.a_key, "SELECT * FROM logs")
        assert str(orgs.b) not in str(named.value)
        assert _ask(service, orgs.b_key, "SELECT count(*) FROM logs")["rows"] == [[5]]
        # a big result goes under the caller's org prefix
        big = _ask(service, orgs.a_key, "SELECT * FROM blocks", max_rows=1)
        assert big["truncated"] is True
    finally:
        service.close()
    with connect(dbs.data_url) as conn:
        audited = conn.execute(
            "SELECT org_id, user_sub FROM data.query_audit ORDER BY created_at"
        ).fetchall()
    assert {row[0] for row in audited} == {orgs.a, orgs.b}
    assert all(row[1].startswith("key:") for row in audited)


def test_exports_go_under_the_org(orgs: Orgs, settings: Settings, dbs: Databases) -> None:
    tight = settings.model_copy(update={"query_inline_max_rows": 5})
    service = _service(tight, dbs, orgs.store)
    try:
        big = _ask(service, orgs.a_key, "SELECT * FROM blocks")
    finally:
        service.close()
    assert big["export"]["key"] == f"results/{orgs.a}/{big['query_id']}/result.parquet"


def test_over_http_keys_and_refusals(orgs: Orgs, settings: Settings, dbs: Databases) -> None:
    with serving(create_app(settings, dbs, orgs.store)) as client:
        body = {"sql": "SELECT count(*) FROM blocks"}
        assert post(client, orgs.a_key, body).json()["rows"] == [[110]]
        assert post(client, orgs.b_key, body).json()["rows"] == [[60]]
        wrong = post(client, "trk_" + "0" * 48, body)
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthenticated"
        assert "trk_" not in wrong.text
        with connect(dbs.state_url, autocommit=True) as conn:
            key_id = conn.execute(
                "SELECT key_id FROM state.api_keys WHERE org_id = %s", (orgs.a,)
            ).fetchone()
            assert key_id is not None
            revoke_key(conn, orgs.a, key_id[0])
        revoked = post(client, orgs.a_key, body)
        assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]["message"]
    with connect(dbs.state_url) as conn:
        refusals = conn.execute(
            "SELECT org_id, detail FROM state.audit_events WHERE action = 'auth' ORDER BY event_id"
        ).fetchall()
    assert refusals == [(None, "unknown api key"), (orgs.a, "api key has been revoked")]


def _running_task(settings: Settings, org: uuid.UUID) -> tuple[uuid.UUID, int]:
    task_id = uuid.uuid4()
    url = settings.state_url.get_secret_value()  # type: ignore[union-attr]
    with psycopg.connect(url, options=f"-c trace.org_id={org}") as conn:
        create_task(conn, task_id=task_id, operator="query_test", payload={})
        lease = claim(conn, task_id, lease_seconds=60)
    return task_id, lease.attempt


def test_task_tokens_stay_pinned_to_their_org(
    orgs: Orgs, settings: Settings, dbs: Databases
) -> None:
    service = _service(settings, dbs, orgs.store)
    sql = QueryRequest(sql="SELECT count(*) FROM blocks")
    try:
        task_id, attempt = _running_task(settings, orgs.a)
        good = issue_task_token(orgs.sa, task_id, attempt, [pin(orgs.a_blocks)])
        assert service.query("task", good, sql)["rows"] == [[100]]
        # A's task pinning B's version: B's version is not there for A
        stolen = issue_task_token(orgs.sa, task_id, attempt, [pin(orgs.b_blocks)])
        with pytest.raises(AccessDenied, match="not registered"):
            service.query("task", stolen, sql)
        # a token claiming org B for A's task (a signing key shared by both): no such task
        claimed = issue_task_token(orgs.sb, task_id, attempt, [pin(orgs.b_blocks)], org_id=orgs.b)
        with pytest.raises(AccessDenied, match="not current"):
            service.query("task", claimed, sql)
    finally:
        service.close()


def test_unknown_key_in_process(orgs: Orgs, settings: Settings, dbs: Databases) -> None:
    service = _service(settings, dbs, orgs.store)
    try:
        with pytest.raises(Unauthenticated, match="malformed"):
            _ask(service, "trk_short", "SELECT 1")
    finally:
        service.close()
