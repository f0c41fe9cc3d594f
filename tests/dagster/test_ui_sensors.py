"""What the UI shows of Trace's sensors, with ticks made by Dagster's own sensor daemon iteration
(in process): the dispatcher's tick says what it did and how far each job is, and a failing
or late dispatcher/worker sensor fails its ``trace/sensors`` check (Dagster has no alert on a
sensor's own failure)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import AssetCheckEvaluation, DagsterInstance, SensorResult, instance_for_test
from dagster._core.test_utils import freeze_time
from dagster._daemon.sensor import execute_sensor_iteration

from tests.dagster.ui_graphql import check_executions, sensor_ticks, ui_process
from trace_core.chain_sync import store
from trace_core.chain_sync.yamlload import load_job_file
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_dagster.sensors.health import (
    LATE_AFTER_SECONDS,
    SENSORS_ASSET,
    check_name,
    health_result,
)

JOB = """kind: chain_sync
name: sk
chain_id: 31337
epoch_blocks: 100
mode: {kind: fixed_target, from_block: 0, to_block: 200}
streams:
  blocks: {cryo_dataset_name: blocks, rpc_pool: sk, chunk_size: 50, max_inflight: 2}
"""


@pytest.fixture
def queued_instance() -> Iterator[DagsterInstance]:
    """Requested runs queue (nothing launches them): the test looks at ticks only."""
    overrides = {
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
        }
    }
    with instance_for_test(overrides=overrides) as instance:
        yield instance


def _verdicts(result: SensorResult) -> list[AssetCheckEvaluation]:
    out = [e for e in result.asset_events if isinstance(e, AssetCheckEvaluation)]
    assert len(out) == len(result.asset_events)
    return out


def _tick_all(process: object) -> None:
    """One iteration of the daemon's sensor loop: every running sensor due now ticks."""
    log = logging.getLogger("test_ui_sensors")
    list(execute_sensor_iteration(process, log, None, None))  # type: ignore[arg-type]


def test_dispatcher_ticks_explain_and_a_failing_sensor_fails_its_check(
    trace_env: Runtime,
    queued_instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("TRACE_CRYO_MODE", "fake")
    rt = Runtime(load_settings())
    job_file = tmp_path / "sk.yaml"
    job_file.write_text(JOB)
    spec, raw = load_job_file(job_file)
    with rt.state() as conn:
        store.apply_job(conn, rt.settings.org_id, spec, raw, str(job_file))

    start = time.time()
    with ui_process(queued_instance, rt, monkeypatch) as process:
        with freeze_time(start):
            _tick_all(process)
        ui = process.create_request_context()
        # the dispatcher's tick reads what it did and the job's progress, not "0 runs requested"
        (tick, *_) = sensor_ticks(ui, "trace_dispatcher")
        assert tick["status"] == "SKIPPED"
        message = tick["skipReason"]
        assert message.splitlines() == [
            # two ranges (max_inflight: 2) of epoch [0, 100); both epochs become partitions
            "planned ranges in 1 epoch(s); published 2 wake-up(s); partitions +2 -0",
            "sk: blocks 0.0% (0 ranges done, 2 in flight), ETA unknown; "
            "blocked: MissingRpcUrl: TRACE_RPC_POOL_SK_URL is not set",
        ]
        # both watched sensors ticked: their checks pass
        healthy = health_result(queued_instance, None, now=start + 1)
        assert [e.passed for e in _verdicts(healthy)] == [True, True]

        # state becomes unreachable: the next ticks fail, and so do the checks, naming why
        monkeypatch.setenv("TRACE_STATE_URL", "postgresql://trace@127.0.0.1:9/nowhere")
        with freeze_time(start + 60):
            _tick_all(process)
        (failed, *_) = sensor_ticks(ui, "trace_dispatcher")
        assert failed["status"] == "FAILURE"
        sick = health_result(queued_instance, healthy.cursor, now=start + 61)
        verdicts = {e.check_name: e for e in _verdicts(sick)}
        for name in ("trace_dispatcher", "trace_worker_wakeups"):
            e = verdicts[check_name(name)]
            assert not e.passed and e.description
            assert e.description.startswith(f"{name} failed its last tick: ")
            assert "unreachable" in e.description.lower()
        assert "FAILING: trace_dispatcher failed its last tick" in str(sick.skip_reason)
        for event in sick.asset_events:  # what the daemon does with the watchdog's result
            queued_instance.report_runless_asset_event(event)
        (shown, *_) = check_executions(ui, SENSORS_ASSET, check_name("trace_dispatcher"))
        assert shown["status"] == "FAILED"
        assert "failed its last tick" in shown["evaluation"]["description"]

        # the same verdict again is not reported again; a late sensor is a new verdict
        again = health_result(queued_instance, sick.cursor, now=start + 62)
        assert again.asset_events == []
        late = health_result(queued_instance, None, now=start + 60 + LATE_AFTER_SECONDS + 1)
        assert all("failed its last tick" in str(e.description) for e in _verdicts(late))
        monkeypatch.setenv("TRACE_STATE_URL", rt.settings.state_url.get_secret_value())  # type: ignore[union-attr]
        # a job applied after the definitions loaded: the tick says to reload them
        job_file.write_text(JOB.replace("name: sk", "name: sk2"))
        spec, raw = load_job_file(job_file)
        with rt.state() as conn:
            store.apply_job(conn, rt.settings.org_id, spec, raw, str(job_file))
        with freeze_time(start + 120):
            _tick_all(process)
        (back, *_) = sensor_ticks(ui, "trace_dispatcher")
        assert back["status"] == "SKIPPED"
        assert "definitions are stale: sk2/blocks applied after they loaded" in back["skipReason"]
        stale = health_result(queued_instance, None, now=start + 120 + LATE_AFTER_SECONDS + 1)
        descriptions = [str(e.description) for e in _verdicts(stale)]
        assert all(" is late: last tick " in d for d in descriptions), descriptions
