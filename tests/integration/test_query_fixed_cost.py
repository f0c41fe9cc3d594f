"""The Query Service's fixed-cost paths (issue 25 item 6), on real Postgres and DuckDB.

- The registry cache (``QueryService.registry``) serves an org's resolution only while the
  org's ``registry_generation`` holds: a committed version, job or stream change bumps it in
  the committing transaction (migration 0085), and one org's entry is never another's, even
  at the same generation.
- The durable audit overlaps the engine: the 'started' row commits durably before the answer
  (if it fails, the query fails: no answer without a row) and the outcome follows off the
  answer's path (if it fails, the row stays 'started' and the error is logged).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import psycopg
import pytest

from tests.integration.test_query_service import audit_rows, blocks_table, publish
from tests.integration.test_tenancy_query import Orgs
from trace_core.db.connection import Databases, connect
from trace_core.errors import DatabaseError, QueryFailed
from trace_core.query.client import local_user_token
from trace_core.query.engine import ResultLimits
from trace_core.query.sandbox import Workdir
from trace_core.query.service import QueryRequest, QueryService
from trace_core.settings import Settings
from trace_core.storage.local import LocalStore
from trace_core.tenancy import tenant_scope

COUNT = "SELECT count(*), max(block_number) FROM blocks"


def _generation(dbs: Databases, org: uuid.UUID) -> int:
    with connect(dbs.state_url) as conn:
        row = conn.execute(
            "SELECT registry_generation FROM state.orgs WHERE org_id = %s", (org,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_registry_cache_follows_commits_and_never_crosses_orgs(
    settings: Settings, dbs: Databases, tmp_path: Path
) -> None:
    orgs = Orgs(settings, dbs, tmp_path)
    with connect(dbs.state_url, autocommit=True) as conn:  # both orgs at one generation
        conn.execute("UPDATE state.orgs SET registry_generation = 7 WHERE org_id = ANY(%s)",
                     ([orgs.a, orgs.b],))  # fmt: skip
    service = QueryService(settings.model_copy(update={"query_workers": 0}), dbs, orgs.store)
    service.open()
    try:
        ask = lambda key: service.query("user", key, QueryRequest(sql=COUNT))["rows"]  # noqa: E731
        assert ask(orgs.a_key) == [[110, 109]]  # cold 0..100 + hot 100..110
        assert ask(orgs.b_key) == [[60, 209]]  # same generation, B's own entry
        assert ask(orgs.a_key) == [[110, 109]]
        held = service.registry._entries
        assert {key[0] for key in held} == {orgs.a, orgs.b}
        assert {gen for gen, _ in held.values()} == {7}
        cached = {key[0]: entry for key, (_, entry) in held.items()}
        assert [r.dataset_version for r in cached[orgs.a][1]["blocks"]] == [
            orgs.a_blocks.dataset_version
        ]

        # a new version of A commits: A's generation moves (B's does not), A sees it at once
        publish(orgs.sa, orgs.store, tmp_path, blocks_table(100, 150), start=100, end=150)
        assert (_generation(dbs, orgs.a), _generation(dbs, orgs.b)) == (8, 7)
        assert ask(orgs.a_key) == [[150, 149]]
        assert ask(orgs.b_key) == [[60, 209]]
    finally:
        service.close()


def test_registry_generation_bumps_once_per_committed_change(
    settings: Settings, dbs: Databases, tmp_path: Path
) -> None:
    """Deferred to the commit, once per org per transaction, whoever commits (a tenant-scoped
    session under row-level security too); a rolled-back change leaves it."""
    orgs = Orgs(settings, dbs, tmp_path)
    a0, b0 = _generation(dbs, orgs.a), _generation(dbs, orgs.b)
    with connect(dbs.state_url, autocommit=True) as conn:
        with conn.transaction():  # many rows, one bump
            conn.execute("UPDATE state.dataset_versions SET verified_at = now() WHERE org_id = %s",
                         (orgs.b,))  # fmt: skip
            conn.execute("UPDATE state.datasets SET dataset_key = dataset_key WHERE org_id = %s",
                         (orgs.b,))  # fmt: skip
        assert (_generation(dbs, orgs.a), _generation(dbs, orgs.b)) == (a0, b0 + 1)
        with pytest.raises(psycopg.errors.RaiseException), conn.transaction():
            conn.execute("DELETE FROM state.dataset_versions WHERE org_id = %s", (orgs.a,))
            conn.execute("DO $$ BEGIN RAISE EXCEPTION 'abandon'; END $$")
        assert _generation(dbs, orgs.a) == a0
        with tenant_scope(conn, orgs.a):  # as trace_tenant, org A
            conn.execute(
                "INSERT INTO state.chain_sync_jobs (job_id, org_id, name, chain_id, mode,"
                " from_block, to_block, yaml_hash, spec) VALUES (%s, %s, 'j', 1,"
                " 'fixed_target', 0, 10, 'h', '{}')",
                (uuid.uuid4(), orgs.a),
            )
        assert (_generation(dbs, orgs.a), _generation(dbs, orgs.b)) == (a0 + 1, b0 + 1)


def _service(settings: Settings, dbs: Databases, store: LocalStore) -> QueryService:
    service = QueryService(
        settings.model_copy(update={"query_workers": 0, "query_audit_durable": True}),
        dbs,
        store,
        hot_sources=None,
    )
    service.open()
    return service


def test_durable_audit_row_is_there_once_answered(
    settings: Settings, dbs: Databases, tmp_path: Path
) -> None:
    store = LocalStore(settings.resolved_home() / "objects")
    publish(settings, store, tmp_path, blocks_table(0, 100))
    service = _service(settings, dbs, store)
    try:
        with psycopg.connect(dbs.data_url) as plain:
            server_default = plain.execute("SHOW synchronous_commit").fetchone()
        with service.data.connection() as conn:  # the 'started' row: the server's commit
            assert conn.execute("SHOW synchronous_commit").fetchone() == server_default
        body = service.query("user", local_user_token(settings), QueryRequest(sql=COUNT))
        (row,) = audit_rows(dbs)  # 'started' before the answer, its outcome right after
        assert body["rows"] == [[100, 99]] and str(row["query_id"]) == body["query_id"]
        assert (row["outcome"], row["rows"], row["error_code"]) == ("ok", 1, None)
        assert row["datasets"][0]["relation"] == "blocks"
        failing = QueryRequest(sql="SELECT not_there FROM blocks")
        with pytest.raises(QueryFailed):  # a failing query: its row says so
            service.query("user", local_user_token(settings), failing)
        assert [r["outcome"] for r in audit_rows(dbs)] == ["ok", "failed"]
    finally:
        service.close()


def test_a_failing_started_row_fails_the_query(
    settings: Settings, dbs: Databases, tmp_path: Path
) -> None:
    """No answer goes out without its durable 'started' row."""
    store = LocalStore(settings.resolved_home() / "objects")
    publish(settings, store, tmp_path, blocks_table(0, 100))
    _refuse_audit(dbs, "INSERT")
    service = _service(settings, dbs, store)
    try:
        with pytest.raises(DatabaseError, match="audit refused"):
            service.query("user", local_user_token(settings), QueryRequest(sql=COUNT))
    finally:
        service.close()
    assert audit_rows(dbs) == []


def test_the_outcome_is_written_off_the_answers_path(
    settings: Settings, dbs: Databases, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer does not wait for the outcome: while the outcome's UPDATE is held up (its
    trigger waits on an advisory lock this test holds), the query has already answered and
    its row is durable as 'started'; once the lock goes the outcome lands. An outcome that
    cannot be written is logged and leaves the row 'started' (as a crash mid-query does); the
    answer stands."""
    store = LocalStore(settings.resolved_home() / "objects")
    publish(settings, store, tmp_path, blocks_table(0, 100))
    with connect(dbs.data_url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION data.hold_outcome() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " PERFORM set_config('lock_timeout', '10s', true);"  # a waiting answer fails, not hangs
            " PERFORM pg_advisory_lock_shared(4242); PERFORM pg_advisory_unlock_shared(4242);"
            " RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER hold BEFORE UPDATE ON data.query_audit"
            " FOR EACH ROW EXECUTE FUNCTION data.hold_outcome()"
        )
    service = _service(settings, dbs, store)
    token = local_user_token(settings)
    try:
        with connect(dbs.data_url, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(4242)")
            body = service.query("user", token, QueryRequest(sql=COUNT))
            assert body["rows"] == [[100, 99]]
            assert service.settle_audit(timeout=0.2) is False  # the outcome waits on the lock
            with connect(dbs.data_url) as reader:
                outcome = reader.execute(
                    "SELECT outcome FROM data.query_audit WHERE query_id = %s",
                    (body["query_id"],),
                ).fetchone()
            assert outcome == ("started",)
            holder.execute("SELECT pg_advisory_unlock(4242)")
        assert service.settle_audit(timeout=30)
        (row,) = audit_rows(dbs)
        assert (str(row["query_id"]), row["outcome"], row["rows"]) == (body["query_id"], "ok", 1)

        _refuse_audit(dbs, "UPDATE")
        with caplog.at_level(logging.ERROR, logger="trace_core.query.service"):
            second = service.query("user", token, QueryRequest(sql=COUNT))
            assert service.settle_audit(timeout=30)
        assert second["rows"] == [[100, 99]]
        assert "outcome not recorded" in caplog.text
    finally:
        service.close()
    assert [r["outcome"] for r in audit_rows(dbs, settled=False)] == ["ok", "started"]


def _refuse_audit(dbs: Databases, event: str) -> None:
    with connect(dbs.data_url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION data.refuse_audit() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'audit refused'; END $$"
        )
        conn.execute(
            f"CREATE TRIGGER refuse BEFORE {event} ON data.query_audit"
            " FOR EACH ROW EXECUTE FUNCTION data.refuse_audit()"
        )


def test_a_cached_resolution_answers_only_if_its_generation_still_holds(
    settings: Settings, dbs: Databases, tmp_path: Path
) -> None:
    """A user query runs on the org's cached resolution while its generation is read beside
    it (through a worker, durable audit). A commit between two queries is seen by the very
    next one: that query's first run (on the entry the commit outdated) is thrown away and it
    runs again on the new version; one audit row, naming what answered. A relation that did
    not exist in the cached entry (the gate would refuse it) is found the same way."""
    store = LocalStore(settings.resolved_home() / "objects")
    first = publish(settings, store, tmp_path, blocks_table(0, 100))
    service = QueryService(
        settings.model_copy(update={"query_workers": 1, "query_audit_durable": True}),
        dbs,
        store,
        hot_sources=None,
    )
    service.open()
    token = local_user_token(settings)
    ask = lambda sql: service.query("user", token, QueryRequest(sql=sql))  # noqa: E731
    try:
        assert ask(COUNT)["rows"] == [[100, 99]]  # resolved and cached
        assert ask(COUNT)["rows"] == [[100, 99]]  # from the cache, generation unchanged
        assert service.reruns == 0

        second = publish(settings, store, tmp_path, blocks_table(100, 150), start=100, end=150)
        body = ask(COUNT)
        assert body["rows"] == [[150, 149]] and service.reruns == 1
        assert ask(COUNT)["rows"] == [[150, 149]] and service.reruns == 1  # cached again

        publish(
            settings, store, tmp_path, blocks_table(0, 7), key="logs", end=7,
            config="cryo_ingest.logs:v1",
        )  # fmt: skip
        assert ask("SELECT count(*) FROM logs")["rows"] == [[7]] and service.reruns == 2
    finally:
        service.close()
    rows = audit_rows(dbs)
    assert [r["outcome"] for r in rows] == ["ok"] * 5
    (answered,) = [r for r in rows if str(r["query_id"]) == body["query_id"]]
    assert {d["dataset_version"] for d in answered["datasets"]} == {
        str(first.dataset_version),
        str(second.dataset_version),
    }


def test_a_worker_renders_rows_as_the_service_does(
    settings: Settings, dbs: Databases, tmp_path: Path
) -> None:
    """A worker sends inline rows already rendered as JSON values (no Arrow to decode and
    render on the answer's path): the same values as rendering in process, for every kind of
    value; a UDF's table (``query_table``) still comes back as Arrow."""
    store = LocalStore(settings.resolved_home() / "objects")
    publish(settings, store, tmp_path, blocks_table(0, 100))
    sql = (
        "SELECT block_number, block_hash, gas_used::UBIGINT AS g, 1.5::DECIMAL(9,2) AS d,"
        " 'nan'::DOUBLE AS f, DATE '2026-12-07' AS day, [1, 2] AS l, {'a': 'x'} AS s,"
        " NULL AS nothing FROM blocks ORDER BY block_number LIMIT 3"
    )
    token = local_user_token(settings)
    answers = []
    for workers in (1, 0):
        service = QueryService(
            settings.model_copy(update={"query_workers": workers}), dbs, store, hot_sources=None
        )
        service.open()
        try:
            answers.append(service.query("user", token, QueryRequest(sql=sql)))
            if workers:
                table = service.query_table("user", token, QueryRequest(sql=sql))
                assert service.workers is not None
                workdir = Workdir(service.engine.work_root)
                limits = ResultLimits(10, 1 << 20)
                sent = service.workers.execute(
                    "SELECT 1 AS one", [], limits, workdir, json_rows=True
                )
                assert (sent.rows, sent.batches) == ([[1]], [])
                workdir.cleanup()
        finally:
            service.close()
    in_worker, in_process = answers
    assert in_worker["rows"] == in_process["rows"] and len(in_worker["rows"]) == 3
    assert in_worker["rows"][0][1:] == [
        "0x" + "00" * 32, "21000", "1.50", None, "2026-12-07", [1, 2], {"a": "x"}, None,
    ]  # fmt: skip
    assert in_worker["columns"] == in_process["columns"]
    assert table.num_rows == 3 and table.column("g").to_pylist()[0] == 21000
