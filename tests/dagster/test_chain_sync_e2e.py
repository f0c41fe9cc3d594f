"""chain_sync end to end through Dagster's harness on a real anvil chain with real cryo."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance

from trace_core.chain_sync import store
from trace_core.chain_sync.yamlload import load_job_file
from trace_core.datasets import registry
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_dagster.definitions import build_definitions
from trace_dagster.driver import drive_until_idle
from trace_dagster.partitions import partitions_def_name, stream_asset_key
from trace_lite.devtools.devchain import DevChain

JOB = """kind: chain_sync
name: e2e
chain_id: {chain_id}
mode: {{kind: fixed_target, from_block: 0, to_block: 1200}}
streams:
  blocks: {{cryo_dataset_name: blocks, rpc_pool: e2e, chunk_size: 400, max_inflight: 2}}
  transactions: {{cryo_dataset_name: transactions, rpc_pool: e2e, chunk_size: 400, max_inflight: 2}}
"""


def test_fixed_target_job_syncs_through_dagster(
    trace_env: Runtime,
    dagster_instance: DagsterInstance,
    anvil_chain: DevChain,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("TRACE_RPC_POOL_E2E_URL", anvil_chain.rpc_url)
    rt = Runtime(load_settings())
    job_file = tmp_path / "e2e.yaml"
    job_file.write_text(JOB.format(chain_id=anvil_chain.chain_id))
    spec, raw = load_job_file(job_file)
    from trace_core.db.migrate import migrate

    migrate(rt.dbs)
    with rt.state() as conn:
        first = store.apply_job(conn, rt.settings.org_id, spec, raw, str(job_file))
        again = store.apply_job(conn, rt.settings.org_id, spec, raw, str(job_file))
    assert first.created and not again.changed

    report = drive_until_idle(rt, build_definitions(rt), dagster_instance, timeout=300)
    assert report.idle and report.dead_tasks == 0 and report.failed_runs == 0

    with rt.state() as conn:
        ranges = store.list_ranges(conn, first.job_id)
        assert sorted((r.dataset_key, r.range_start, r.status) for r in ranges) == sorted(
            (k, s, "completed") for k in ("blocks", "transactions") for s in (0, 400, 800)
        )
        versions = registry.versions_for_stream(
            conn, rt.settings.org_id, anvil_chain.chain_id, "blocks"
        )
        tx_versions = registry.versions_for_stream(
            conn, rt.settings.org_id, anvil_chain.chain_id, "transactions"
        )
    assert len(versions) == 3 and len(tx_versions) == 3
    # committed Parquet matches the chain exactly
    blocks = sum(v.row_count for v in versions)
    txs = sum(v.row_count for v in tx_versions)
    assert blocks == 1200
    assert txs == anvil_chain.count_transactions(0, 1200)
    for v in versions:
        for f in rt.store.list(v.storage_prefix):
            if f.key.endswith(".parquet"):
                nums = pq.read_table(rt.store.duckdb_uri(f.key), columns=["block_number"]).column(0)
                assert (
                    min(nums.to_pylist()) >= v.range_start and max(nums.to_pylist()) < v.range_end
                )

    # the UI view: the job's one epoch is a materialized partition of each stream asset,
    # recording the version of each of its ranges; each range was an observation of it
    for key, vs in (("blocks", versions), ("transactions", tx_versions)):
        parts = dagster_instance.get_dynamic_partitions(partitions_def_name("e2e", key))
        assert parts == ["000000000000-000000100000"]
        mats = dagster_instance.get_materialized_partitions(stream_asset_key("e2e", key))
        assert mats == set(parts)
        event = dagster_instance.get_latest_materialization_event(stream_asset_key("e2e", key))
        assert event is not None and event.asset_materialization is not None
        meta = event.asset_materialization.metadata
        assert meta["dataset_versions"].value == {
            f"{v.range_start:012d}-{v.range_end:012d}": str(v.dataset_version) for v in vs
        }
        assert meta["rows"].value == sum(v.row_count for v in vs)
        observed = dagster_instance.fetch_observations(stream_asset_key("e2e", key), 10).records
        assert sorted(o.asset_observation.metadata["range"].value for o in observed) == sorted(
            meta["dataset_versions"].value
        )

    # re-planning and re-running schedule nothing twice
    again_report = drive_until_idle(rt, build_definitions(rt), dagster_instance, timeout=60)
    assert again_report.runs == 0
    with rt.state() as conn:
        assert (
            len(
                registry.versions_for_stream(
                    conn, rt.settings.org_id, anvil_chain.chain_id, "blocks"
                )
            )
            == 3
        )
