"""A backfill launched from the UI over many epochs runs within its RPC pool's Dagster pool,
exactly, on the workspace.yaml path: the dispatcher sets the pool's slots from
``TRACE_RPC_POOL_<P>_MAX_CONCURRENT``, the stream asset is one run per epoch
(``BackfillPolicy.multi_run(1)``) in that pool, and the shipped dagster.yaml holds a run's
slot for the whole run (``concurrency: pools: granularity: run``). Dagster's own daemons
(backfill, queued run coordinator) run one iteration at a time in process; the run launcher is
Dagster's test launcher, so launched runs stay in flight until the test ends them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter, instance_for_test
from dagster._daemon.backfill import execute_backfill_iteration
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)

from tests.dagster.ui_graphql import gql, ui_process
from trace_core.chain_sync import store
from trace_core.chain_sync.planner import range_partition_key
from trace_core.chain_sync.yamlload import load_job_file
from trace_core.runtime import Runtime
from trace_core.settings import REPO_ROOT, load_settings
from trace_dagster.driver import _apply_partitions
from trace_dagster.partitions import stream_asset_key
from trace_dagster.pools import dagster_pool
from trace_dagster.sensors.dispatcher import dispatcher_result

LIMIT = 2
EPOCHS = 6
JOB = f"""kind: chain_sync
name: bf
chain_id: 31337
epoch_blocks: 100
mode: {{kind: fixed_target, from_block: 0, to_block: {EPOCHS * 100}}}
streams:
  blocks: {{cryo_dataset_name: blocks, rpc_pool: bfpool, chunk_size: 50, max_inflight: 1}}
"""
LAUNCH = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""
IN_FLIGHT = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


@pytest.fixture
def shipped_instance() -> Iterator[DagsterInstance]:
    """The shipped dagster_home/dagster.yaml's run queue and pools, with Dagster's test launcher."""
    shipped: dict[str, Any] = yaml.safe_load(
        (REPO_ROOT / "dagster_home" / "dagster.yaml").read_text()
    )
    overrides = {
        "run_coordinator": shipped["run_coordinator"],
        "concurrency": shipped["concurrency"],
        "run_launcher": {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"},
    }
    with instance_for_test(overrides=overrides) as instance:
        yield instance


def _in_flight(instance: DagsterInstance) -> list[str]:
    return [r.run_id for r in instance.get_runs(RunsFilter(statuses=IN_FLIGHT))]


def test_backfill_over_many_epochs_runs_within_the_pool_limit(
    trace_env: Runtime,
    shipped_instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    instance = shipped_instance
    monkeypatch.setenv("TRACE_RPC_POOL_BFPOOL_MAX_CONCURRENT", str(LIMIT))
    rt = Runtime(load_settings())
    job_file = tmp_path / "bf.yaml"
    job_file.write_text(JOB)
    spec, raw = load_job_file(job_file)
    with rt.state() as conn:
        store.apply_job(conn, rt.settings.org_id, spec, raw, str(job_file))
    # the dispatcher's first tick adds every epoch and sets the pool's slots
    _apply_partitions(instance, dispatcher_result(rt, None, instance))
    pool = dagster_pool("bfpool")
    assert instance.event_log_storage.get_concurrency_info(pool).slot_count == LIMIT

    log = logging.getLogger("test_backfill_pools")
    keys = [range_partition_key(s, s + 100) for s in range(0, EPOCHS * 100, 100)]
    with ui_process(instance, rt, monkeypatch) as process:
        ui = process.create_request_context()
        launched = gql(
            ui,
            LAUNCH,
            params={
                "partitionNames": keys,
                "assetSelection": [{"path": list(stream_asset_key("bf", "blocks").path)}],
            },
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        list(execute_backfill_iteration(process, log))
        runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": launched["backfillId"]}))
        # one run per epoch, each in the RPC pool's Dagster pool, all queued
        assert sorted(r.tags["dagster/asset_partition_range_start"] for r in runs) == keys
        assert all(
            r.tags["dagster/asset_partition_range_end"]
            == r.tags["dagster/asset_partition_range_start"]
            for r in runs
        )
        assert all(r.status == DagsterRunStatus.QUEUED for r in runs)

        coordinator = QueuedRunCoordinatorDaemon(interval_seconds=1)
        finished = 0
        while finished < EPOCHS:
            list(coordinator.run_iteration(process))
            flying = _in_flight(instance)
            # exactly the pool's slots in flight, never more, until the queue runs dry
            assert len(flying) == min(LIMIT, EPOCHS - finished)
            list(coordinator.run_iteration(process))  # a second pass launches nothing more
            assert sorted(_in_flight(instance)) == sorted(flying)
            run = instance.get_run_by_id(flying[0])
            assert run is not None
            instance.report_run_failed(run)  # one finishes: its slot frees
            finished += 1
    assert not instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.QUEUED]))
