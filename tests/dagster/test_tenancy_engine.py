"""The engine serves every org (issue 22): two orgs apply a chain_sync job of the same name on
one anvil chain, and one drive of the sensors (``trace-lite run --until-idle``'s engine calls)
commits both orgs' ranges, each as its own org; a third org's broken RPC stops neither.

Real Postgres (roles and row-level security), real anvil and cryo, Dagster's own harness
(``instance_for_test``, the sensors evaluated and their runs executed in process).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagster import (
    AssetCheckKey,
    AssetKey,
    DagsterInstance,
    RunsFilter,
    build_schedule_context,
)

from trace_core.chain_sync import store
from trace_core.chain_sync.yamlload import load_job_file
from trace_core.datasets import registry
from trace_core.db.connection import connect
from trace_core.db.migrate import migrate
from trace_core.engine import orgs
from trace_core.engine.intake import ORG_TAG
from trace_core.engine.progress import every_org_progress_lines
from trace_core.errors import DatabaseError, TraceError
from trace_core.query.service import QueryRequest, QueryService
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_core.tenancy import create_key, create_org, tenant_scope
from trace_core.transforms.spec import parse_transform
from trace_core.transforms.store import apply_transform
from trace_dagster.analytics import analytics_asset_key, job_name
from trace_dagster.definitions import build_definitions
from trace_dagster.driver import drive_until_idle
from trace_dagster.integrity import INTEGRITY_JOB
from trace_dagster.keys import partitions_def_name, stream_asset_key
from trace_dagster.sensors.integrity import integrity_request
from trace_dagster.transforms import transform_asset_key
from trace_lite.devtools.devchain import DevChain

# the same job name in both orgs; each org's blocks are its own dataset
JOB = """kind: chain_sync
name: shared
chain_id: {chain_id}
mode: {{kind: fixed_target, from_block: 0, to_block: {to_block}}}
streams:
  blocks: {{cryo_dataset_name: blocks, rpc_pool: e2e, chunk_size: 400, max_inflight: 2}}
"""
# an org whose RPC is down: its head polls fail, recorded, and nobody else notices
BROKEN = """kind: chain_sync
name: shared
chain_id: {chain_id}
mode: {{kind: follow_head, from_block: 0, tail_lag: 0, head_poll_interval_seconds: 1, max_head_age_seconds: 30}}
streams:
  blocks: {{cryo_dataset_name: blocks, rpc_pool: broken, chunk_size: 400, max_inflight: 2}}
"""
ANALYTICS = """kind: chain_sync
name: ana
chain_id: {chain_id}
mode: {{kind: fixed_target, from_block: 0, to_block: 400}}
streams:
  geth_balance_diffs:
    {{cryo_dataset_name: geth_balance_diffs, rpc_pool: e2e, chunk_size: 400, max_inflight: 1}}
analytics: {{balance_diffs: geth_balance_diffs, genesis: {{zero: true}}}}
"""
EPOCH = "000000000000-000000100000"


def _apply(rt: Runtime, org: uuid.UUID | str, text: str, path: Path) -> uuid.UUID:
    path.write_text(text)
    spec, raw = load_job_file(path)
    with rt.state() as conn:
        return store.apply_job(conn, org, spec, raw, str(path)).job_id


def test_two_orgs_same_job_name_both_synced_each_as_itself(
    trace_env: Runtime,
    dagster_instance: DagsterInstance,
    anvil_chain: DevChain,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("TRACE_RPC_POOL_E2E_URL", anvil_chain.rpc_url)
    monkeypatch.setenv("TRACE_RPC_POOL_BROKEN_URL", "http://127.0.0.1:1")  # nothing listens
    rt = Runtime(load_settings())
    migrate(rt.dbs)
    home = uuid.UUID(str(rt.settings.org_id))
    with rt.state() as conn:
        beta = create_org(conn, "beta").org_id
        broken = create_org(conn, "aaa-broken").org_id  # served first: by name
        home_key = create_key(conn, home, "viewer")[1]
        beta_key = create_key(conn, beta, "viewer")[1]
    chain = anvil_chain.chain_id
    jobs = {
        home: _apply(rt, home, JOB.format(chain_id=chain, to_block=800), tmp_path / "a.yaml"),
        beta: _apply(rt, beta, JOB.format(chain_id=chain, to_block=400), tmp_path / "b.yaml"),
    }
    _apply(rt, broken, BROKEN.format(chain_id=chain), tmp_path / "c.yaml")

    report = drive_until_idle(rt, build_definitions(rt), dagster_instance, timeout=300)
    assert report.idle and report.dead_tasks == 0 and report.failed_runs == 0
    # the dispatcher tick's message shows every org's progress, each job named as its keys are
    lines = every_org_progress_lines(rt)
    assert [line.split(":")[0] for line in lines] == [
        "shared",
        "org_aaa_broken/shared",
        "org_beta/shared",
    ]
    assert "blocks done (2 ranges done" in lines[0] and "blocks done (1 ranges done" in lines[2]

    ends = {home: 800, beta: 400}
    with rt.state() as conn:
        for org, job_id in jobs.items():
            ranges = store.list_ranges(conn, job_id)
            assert {(r.range_start, r.status) for r in ranges} == {
                (s, "completed") for s in range(0, ends[org], 400)
            }
            versions = registry.versions_for_stream(conn, org, chain, "blocks")
            assert {v.org_id for v in versions} == {org}
            assert sum(v.row_count for v in versions) == ends[org]  # every block, once
        # every row the engine wrote for an org is that org's: tasks, ranges, versions, and the
        # wake-ups it planned (stamped by the session acting for the org, not by a trigger)
        for table, by in (
            ("state.tasks", "payload->>'job_id'"),
            ("state.chain_sync_scheduled_ranges", "job_id::text"),
        ):
            rows = conn.execute(
                f"SELECT {by}, org_id FROM {table} WHERE {by} = ANY(%s)",
                ([str(j) for j in jobs.values()],),
            ).fetchall()
            assert {(uuid.UUID(j), o) for j, o in rows} == {(j, o) for o, j in jobs.items()}
        mixed = conn.execute(
            "SELECT count(*) FILTER (WHERE o.org_id <> t.org_id), count(*) FROM state.outbox o"
            " JOIN state.tasks t ON t.task_id::text = o.payload->>'task_id'"
        ).fetchone()
        assert mixed is not None and mixed[0] == 0 and mixed[1] >= 3
        # the broken org's head poll failed and was recorded as its own; it planned nothing
        failure = conn.execute(
            "SELECT org_id, last_error_kind FROM state.chain_head_observations"
            " WHERE rpc_pool = 'broken'"
        ).fetchall()
        assert failure == [(broken, "RpcUnavailable")]

    # each org sees only its own, through row-level security
    assert rt.dbs.state_url
    with connect(rt.dbs.state_url, autocommit=True) as conn:
        for org, job_id in jobs.items():
            with tenant_scope(conn, org):
                seen = conn.execute(
                    "SELECT DISTINCT job_id FROM state.chain_sync_scheduled_ranges"
                ).fetchall()
                assert seen == [(job_id,)]
                owners = conn.execute(
                    "SELECT DISTINCT d.org_id FROM state.dataset_versions v"
                    " JOIN state.datasets d USING (dataset_uuid)"
                ).fetchall()
                assert owners == [(org,)]
    # and a query with each org's API key reads its own blocks
    service = QueryService(rt.settings.model_copy(update={"query_workers": 0}), rt.dbs, rt.store)
    service.open()
    try:
        for org, key in ((home, home_key), (beta, beta_key)):
            got = service.query(
                "user", key, QueryRequest(sql="SELECT count(*), max(block_number) FROM blocks")
            )
            assert got["rows"] == [[ends[org], ends[org] - 1]]
    finally:
        service.close()

    # a cron transform of the same name in both orgs (applied now: it never runs here)
    text = (
        "kind: transform\nname: per_block\njob: shared\ninputs: [blocks]\noutput: per_block\n"
        "code: {sql: 'SELECT count(*) AS n FROM blocks'}\ntrigger: {cron: '0 * * * *'}\n"
    )
    for org in (home, beta):
        apply_transform(rt.for_org(org), parse_transform(text, source="t.yaml", base=tmp_path))

    # and a job with analytics of the same name in both orgs (applied now: never planned here)
    ana = ANALYTICS.format(chain_id=chain)
    for org in (home, beta):
        _apply(rt, org, ana, tmp_path / "ana.yaml")

    # Dagster: each org's assets under its own keys (the deployment's unprefixed), tagged with
    # its org; each epoch materialized; every worker run tagged with the org it worked for
    defs = build_definitions(rt)
    for prefix, org in ((None, home), ("org_beta", beta)):
        spec = defs.resolve_assets_def(transform_asset_key("shared", "per_block", prefix))
        assert spec.specs_by_key[spec.key].tags[ORG_TAG] == str(org)
        assert set(spec.dependency_keys) == {stream_asset_key("shared", "blocks", prefix)}
        cron = defs.resolve_schedule_def(
            "transform_per_block_cron" if prefix is None else "transform_org_beta__per_block_cron"
        )
        (request,) = list(
            cron.evaluate_tick(
                build_schedule_context(scheduled_execution_time=datetime(2026, 1, 1, tzinfo=UTC))
            ).run_requests
            or []
        )
        assert request.tags[ORG_TAG] == str(org)
        assert request.run_config["ops"]["trigger_source"]["config"]["org"] == str(org)
    tags = {s.key: s.tags.get(ORG_TAG) for s in defs.resolve_all_asset_specs()}
    assert tags[stream_asset_key("shared", "blocks")] == str(home)
    assert tags[stream_asset_key("shared", "blocks", "org_beta")] == str(beta)
    assert stream_asset_key("shared", "blocks", "org_beta") == AssetKey(
        ["org_beta", "chain_sync", "shared", "blocks"]
    )
    for prefix in (None, "org_beta"):
        name = partitions_def_name("shared", "blocks", prefix)
        assert dagster_instance.get_dynamic_partitions(name) == [EPOCH]
        key = stream_asset_key("shared", "blocks", prefix)
        assert dagster_instance.get_materialized_partitions(key) == {EPOCH}
    # the integrity sensor (the driver leaves it to the daemon) starts a pass for every org's
    # new ranges; the pass verifies both orgs' ranges, each on its own asset's check
    (request,) = integrity_request(rt, None, dagster_instance).run_requests or []
    assert request.tags[ORG_TAG] == str(home)  # a system run, as the deployment
    run = defs.resolve_job_def(INTEGRITY_JOB).execute_in_process(
        instance=dagster_instance, tags=dict(request.tags)
    )
    assert run.success
    for prefix in (None, "org_beta"):
        check = AssetCheckKey(stream_asset_key("shared", "blocks", prefix), "integrity")
        assert check in {k for c in defs.asset_checks or [] for k in c.check_keys}
        record = dagster_instance.get_latest_asset_check_evaluation_record(check)
        assert record is not None and record.event is not None
        assert record.event.dagster_event.event_specific_data.passed  # type: ignore[union-attr]
    for prefix, org in ((None, home), ("org_beta", beta)):
        key = analytics_asset_key("ana", "balance_changes", prefix)
        assert tags[key] == str(org)
        assert defs.resolve_job_def(job_name("ana", "balance_range", prefix))
    runs = dagster_instance.get_runs(RunsFilter(job_name="trace_worker"))
    run_orgs = [set(r.tags[ORG_TAG].split(",")) for r in runs]
    assert set().union(*run_orgs) == {str(home), str(beta)}
    for run, named in zip(runs, run_orgs, strict=True):
        ran = {
            orgs_of_task(rt, uuid.UUID(k.removeprefix("trace/task.")))
            for k in run.tags
            if k.startswith("trace/task.")
        }
        assert named == ran


def orgs_of_task(rt: Runtime, task_id: uuid.UUID) -> str:
    with rt.state() as conn:
        row = conn.execute("SELECT org_id FROM state.tasks WHERE task_id = %s", (task_id,))
        found = row.fetchone()
    assert found is not None
    return str(found[0])


def test_each_org_logs_a_failing_org_and_serves_the_next() -> None:
    served: list[str] = []
    refs = [orgs.OrgRef(uuid.uuid4(), n) for n in ("a", "b", "c")]

    def step(org: orgs.OrgRef) -> str:
        if org.name == "b":
            raise DatabaseError("b's job is broken")
        served.append(org.name)
        return org.name

    assert [o.name for o, _ in orgs.each_org(refs, "plan", step)] == ["a", "c"]
    assert served == ["a", "c"]
    with pytest.raises(ZeroDivisionError):  # a bug is not a failure of one org's work
        orgs.each_org(refs, "plan", lambda org: 1 // 0)
    assert issubclass(DatabaseError, TraceError)
    # a tick's budget is shared, never multiplied by the number of orgs
    assert [orgs.fair_shares(100, n) * n for n in (1, 3, 7)] == [100, 99, 98]
