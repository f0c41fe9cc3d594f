"""A failed attempt prints one line with the error's kind and message, not Dagster's framework
stack (the run's event log keeps the full error). Real cryo against an RPC that refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance

from trace_core.chain_sync import store
from trace_core.chain_sync.yamlload import load_job_file
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_dagster.definitions import build_definitions
from trace_dagster.driver import drive_until_idle

JOB = """kind: chain_sync
name: loud
chain_id: 31337
max_attempts: 1
mode: {kind: fixed_target, from_block: 0, to_block: 100}
streams:
  blocks: {cryo_dataset_name: blocks, rpc_pool: loud, chunk_size: 100, max_inflight: 1}
"""


def test_a_failed_attempt_is_one_console_line(
    trace_env: Runtime,
    dagster_instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("TRACE_RPC_POOL_LOUD_URL", "http://127.0.0.1:9")  # nothing listens
    rt = Runtime(load_settings())
    job_file = tmp_path / "loud.yaml"
    job_file.write_text(JOB)
    spec, raw = load_job_file(job_file)
    with rt.state() as conn:
        store.apply_job(conn, rt.settings.org_id, spec, raw, str(job_file))
    capfd.readouterr()

    report = drive_until_idle(rt, build_definitions(rt), dagster_instance, timeout=120)
    assert report.failed_runs == 1 and report.dead_tasks == 1
    err = capfd.readouterr().err
    (failure,) = [ln for ln in err.splitlines() if "STEP_FAILURE" in ln]
    assert "execute_tasks" in failure and "(Failure: task " in failure and "-> dead: " in failure
    assert "Traceback" not in err and '  File "' not in err  # no stack frame anywhere
    # the event log keeps the whole error for the UI
    (run_id,) = report.run_ids
    (entry,) = dagster_instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
    assert entry.dagster_event is not None
    error = entry.dagster_event.step_failure_data.error
    assert error is not None and error.stack
