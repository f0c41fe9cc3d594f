"""Reviving dead ranges from Dagster: launching a stream partition, re-executing a failed run.

Real cryo against an RPC that refuses connections kills every range of a job; the RPC is then
pointed at a real anvil chain and the ranges come back through the two UI paths (the Python
equivalents: the implicit asset job executed for one partition, and ``execute_job`` with
``ReexecutionOptions.from_failure``, which sets the run's ``parent_run_id`` as the UI does).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from dagster import (
    AssetMaterialization,
    DagsterInstance,
    DagsterRunStatus,
    ExecuteInProcessResult,
    JobDefinition,
    ReexecutionOptions,
    RunsFilter,
    build_reconstructable_job,
    execute_job,
)

from tests.dagster.ui_graphql import partition_events, partition_statuses, runs_tagged, ui_context
from trace_core.chain_sync import status, store
from trace_core.chain_sync.planner import range_partition_key
from trace_core.datasets import registry
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_dagster.definitions import build_definitions
from trace_dagster.driver import drive_until_idle
from trace_dagster.partitions import partitions_def_name, stream_asset_key
from trace_dagster.retry import AUTO_RETRY_TAG
from trace_lite.devtools.devchain import DevChain

DEAD_RPC = "http://127.0.0.1:9"  # nothing listens: cryo_ingest's probe fails, retryably
LEASE_SECONDS = 4  # the backstop wake-ups of an in-run revive come one lease later
TO_BLOCK = 300
JOB = """kind: chain_sync
name: rv
chain_id: {chain_id}
max_attempts: 2
epoch_blocks: 200
mode: {{kind: fixed_target, from_block: 0, to_block: {to_block}}}
streams:
  blocks: {{cryo_dataset_name: blocks, rpc_pool: rv, chunk_size: 100, max_inflight: 3}}
  transactions: {{cryo_dataset_name: transactions, rpc_pool: rv, chunk_size: 150, max_inflight: 2}}
"""
STARTS = {"blocks": (0, 100, 200), "transactions": (0, 150)}
# epochs of 200 blocks: [0, 200) holds blocks' first two ranges, [200, 400) its last;
# transactions' [150, 300) crosses the boundary and belongs to both
EPOCHS = {range_partition_key(0, 200), range_partition_key(200, 400)}


def worker_job() -> JobDefinition:
    """``trace_worker`` as the code location serves it (reconstructable for ``execute_job``)."""
    return build_definitions().resolve_job_def("trace_worker")


def _ranges(rt: Runtime) -> dict[tuple[str, int], tuple[uuid.UUID, str]]:
    with rt.state() as conn:
        job_id = store.resolve_job(conn, rt.settings.org_id, "rv")
        return {
            (r.dataset_key, r.range_start): (r.task_id, r.status)
            for r in store.list_ranges(conn, job_id)
        }


def _attempts(rt: Runtime, task_id: uuid.UUID) -> list[tuple[int, str | None]]:
    with rt.state() as conn:
        rows = conn.execute(
            "SELECT attempt, outcome FROM state.task_attempts WHERE task_id = %s ORDER BY attempt",
            (task_id,),
        ).fetchall()
    return [(int(a), o) for a, o in rows]


def _revivals(rt: Runtime) -> dict[uuid.UUID, list[str]]:
    with rt.state() as conn:
        rows = conn.execute(
            "SELECT task_id, source FROM state.task_revivals ORDER BY task_id, revive"
        ).fetchall()
    out: dict[uuid.UUID, list[str]] = {}
    for task_id, source in rows:
        out.setdefault(task_id, []).append(source)
    return out


def _materializations(result: ExecuteInProcessResult) -> list[AssetMaterialization]:
    """Materializations of every node of the run (the asset's node need not come first: the
    stream's integrity check is a node of the same job)."""
    return [
        m
        for node in result.job_def.nodes
        for m in result.asset_materializations_for_node(node.name)
    ]


def test_dead_ranges_revive_from_a_partition_launch_and_a_reexecuted_run(
    trace_env: Runtime,
    dagster_instance: DagsterInstance,
    anvil_chain: DevChain,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("TRACE_RPC_POOL_RV_URL", DEAD_RPC)
    monkeypatch.setenv("TRACE_LEASE_SECONDS", str(LEASE_SECONDS))
    rt = Runtime(load_settings())
    job_file = tmp_path / "rv.yaml"
    job_file.write_text(JOB.format(chain_id=anvil_chain.chain_id, to_block=TO_BLOCK))
    from trace_core.chain_sync.yamlload import load_job_file

    spec, raw = load_job_file(job_file)
    with rt.state() as conn:
        store.apply_job(conn, rt.settings.org_id, spec, raw, str(job_file))

    # 1. every range dies: two failed runs (max_attempts: 2), the streams are blocked
    report = drive_until_idle(rt, build_definitions(rt), dagster_instance, timeout=120)
    assert report.idle and report.dead_tasks == 5 and report.failed_runs == 2
    ranges = _ranges(rt)
    assert {s for _, s in ranges.values()} == {"dead"}
    assert sorted(ranges) == sorted((k, s) for k, starts in STARTS.items() for s in starts)
    with rt.state() as conn:
        (js,) = status.job_status(conn, rt.settings.org_id, "rv")
    for stream in js["streams"]:
        dead = stream["dead_ranges"]
        assert [d["range_start"] for d in dead] == list(STARTS[stream["dataset_key"]])
        assert all(d["attempts"] == 2 and "rpc" in (d["last_error"] or "").lower() for d in dead)
        assert "unreachable" in stream["blocked_reason"]
    assert DEAD_RPC not in str(js)  # the error never names the URL
    # the UI shows each dead range's last error (an observation of its epoch partition)
    asset_key = stream_asset_key("rv", "blocks")
    observed = dagster_instance.fetch_observations(asset_key, limit=100).records
    by_range = {
        r.asset_observation.metadata["range"].value: r for r in observed if r.asset_observation
    }
    assert set(by_range) == {range_partition_key(s, s + 100) for s in (0, 100, 200)}
    dead = by_range[range_partition_key(100, 200)]
    assert dead.partition_key == range_partition_key(0, 200)
    obs = dead.asset_observation
    assert obs is not None and obs.metadata["status"].value == "dead"
    assert "trace-lite retry --task" in str(obs.metadata["revive"].value)
    tx_obs = dagster_instance.fetch_observations(stream_asset_key("rv", "transactions"), 100)
    assert {r.partition_key for r in tx_obs.records} == EPOCHS  # [150, 300) on both epochs
    assert dagster_instance.get_materialized_partitions(asset_key) == set()
    # what the UI loads: both epochs are Failed (not Missing), each with its dead range's error
    with ui_context(dagster_instance, rt, monkeypatch) as ui:
        parts = partition_statuses(ui, asset_key)
        assert parts["failedPartitions"] == EPOCHS and not parts["materializedPartitions"]
        (latest, *_) = partition_events(ui, asset_key, range_partition_key(200, 400))
        assert latest["status"] == "dead" and "rpc" in str(latest["last_error"]).lower()
        assert "trace-lite retry" in str(latest["revive"])
        # filtering runs by any range a batch touched finds both attempts' runs
        touched = runs_tagged(ui, f"trace/range.transactions.{range_partition_key(150, 300)}", "rv")
        assert len(touched) == 2 and {r["status"] for r in touched} == {"FAILURE"}
    (failed_run,) = [
        r
        for r in dagster_instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
        if r.tags.get("trace/attempt") == "2"
    ]

    # 2. a normal first run of the same batch revives nothing: dead tasks are skipped
    defs = build_definitions(rt)
    first = defs.resolve_job_def("trace_worker").execute_in_process(
        run_config=failed_run.run_config, instance=dagster_instance, raise_on_error=False
    )
    assert first.success and _revivals(rt) == {}
    # ... and neither does Dagster's automatic run retry (a re-execution tagged retry_number)
    auto = execute_job(
        build_reconstructable_job(__name__, "worker_job"),
        instance=dagster_instance,
        run_config=failed_run.run_config,  # trace_worker runs in process already
        tags={AUTO_RETRY_TAG: "1"},
        reexecution_options=ReexecutionOptions.from_failure(failed_run.run_id, dagster_instance),
    )
    assert auto.success and _revivals(rt) == {}
    assert {s for _, s in _ranges(rt).values()} == {"dead"}

    # 3. the RPC is back: launching epoch [200, 400) revives and runs its one dead range
    # ([200, 300): the job ends at 300) and materializes the epoch with that range's version
    monkeypatch.setenv("TRACE_RPC_POOL_RV_URL", anvil_chain.rpc_url)
    key = range_partition_key(200, 400)
    launched = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=dagster_instance, partition_key=key, asset_selection=[asset_key]
    )
    assert launched.success
    (mat,) = _materializations(launched)
    assert mat.partition == key and mat.metadata["ranges_revived"].value == 1
    assert mat.metadata["rows"].value == 100 and mat.metadata["complete"].value is True
    ranges = _ranges(rt)
    launched_task = ranges[("blocks", 200)][0]
    assert {k for k, (_, s) in ranges.items() if s != "dead"} == {("blocks", 200)}
    assert ranges[("blocks", 200)][1] == "completed"
    assert _attempts(rt, launched_task) == [(1, "retryable"), (2, "retryable"), (3, "succeeded")]
    assert _revivals(rt) == {launched_task: ["dagster_partition"]}
    versions = mat.metadata["dataset_versions"].value
    assert list(versions) == [range_partition_key(200, 300)]  # type: ignore[arg-type]
    # launching a committed epoch again reports the committed versions, runs nothing
    again = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=dagster_instance, partition_key=key, asset_selection=[asset_key]
    )
    (mat2,) = _materializations(again)
    assert mat2.metadata["ranges_run"].value == 0
    assert mat2.metadata["dataset_versions"].value == versions
    assert len(_attempts(rt, launched_task)) == 3

    with ui_context(dagster_instance, rt, monkeypatch) as ui:  # materialized clears failed
        parts = partition_statuses(ui, asset_key)
        assert parts["materializedPartitions"] == {key}
        assert parts["failedPartitions"] == EPOCHS - {key}

    # 4. re-executing the failed worker run (as the UI's "Re-execute" does) revives its
    # remaining dead tasks, with a fresh budget, and runs them to success
    reexec = execute_job(
        build_reconstructable_job(__name__, "worker_job"),
        instance=dagster_instance,
        run_config=failed_run.run_config,  # trace_worker runs in process already
        reexecution_options=ReexecutionOptions.from_failure(failed_run.run_id, dagster_instance),
    )
    assert reexec.success
    rerun = dagster_instance.get_run_by_id(reexec.run_id)
    assert rerun is not None and rerun.parent_run_id == failed_run.run_id
    ranges = _ranges(rt)
    assert {s for _, s in ranges.values()} == {"completed"}
    for task_id, _ in ranges.values():
        if task_id != launched_task:
            assert _attempts(rt, task_id)[-1] == (3, "succeeded")
            assert _revivals(rt)[task_id] == ["dagster_reexecution"]
    with rt.state() as conn:
        # each revive wrote a wake-up to the outbox (a backstop, one lease later)
        backstops = conn.execute(
            "SELECT count(*) FROM state.outbox WHERE topic = 'task_wakeup' "
            "AND (payload->>'wakeup')::int = 3 AND payload->>'task_id' = ANY(%s)",
            ([str(t) for t, _ in ranges.values()],),
        ).fetchone()
        (js,) = status.job_status(conn, rt.settings.org_id, "rv")
    assert backstops == (5,)
    assert js["done"] and all(s["dead_ranges"] == [] for s in js["streams"])

    # the backstop wake-ups find the tasks done: no run, and every range committed once
    after = drive_until_idle(rt, build_definitions(rt), dagster_instance, timeout=60)
    assert after.idle and after.runs == 0 and after.dead_tasks == 0
    for stream, starts in STARTS.items():
        size = TO_BLOCK // len(starts)
        with rt.state() as conn:
            versions = registry.versions_for_stream(
                conn, rt.settings.org_id, anvil_chain.chain_id, stream
            )
        assert sorted((v.range_start, v.range_end) for v in versions) == [
            (s, s + size) for s in starts
        ]  # one committed version per range
        assert (
            set(dagster_instance.get_dynamic_partitions(partitions_def_name("rv", stream)))
            == EPOCHS
        )
        assert (
            dagster_instance.get_materialized_partitions(stream_asset_key("rv", stream)) == EPOCHS
        )
