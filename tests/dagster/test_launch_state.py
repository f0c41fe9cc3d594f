"""What the worker sensor reads of a requested run in Dagster (``launch_state``): gone, waiting
for a launch slot, or launched at a time (the recovery bound counts one lease from it)."""

from __future__ import annotations

import time

from dagster import DagsterEvent, DagsterEventType, DagsterInstance, DagsterRunStatus
from dagster._core.test_utils import create_run_for_test

from trace_core.engine.intake import GONE, WAITING
from trace_core.runtime import Runtime
from trace_dagster.sensors.worker import RUN_KEY_TAG, launch_state


def _run(instance: DagsterInstance, key: str, status: DagsterRunStatus) -> str:
    run = create_run_for_test(
        instance, job_name="trace_worker", status=status, tags={RUN_KEY_TAG: key}
    )
    return run.run_id


def test_launch_state_by_run_status(trace_env: Runtime, dagster_instance: DagsterInstance) -> None:
    instance = dagster_instance
    assert launch_state(instance, "no-such-run") == GONE
    _run(instance, "not-started", DagsterRunStatus.NOT_STARTED)
    assert launch_state(instance, "not-started") == WAITING  # not launched yet: left alone
    for status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
        _run(instance, status.value, status)
        assert launch_state(instance, status.value) == GONE

    # launched: the launcher's "starting" event is the launch time
    before = time.time()
    run_id = _run(instance, "starting", DagsterRunStatus.NOT_STARTED)
    instance.report_dagster_event(
        DagsterEvent(DagsterEventType.PIPELINE_STARTING.value, job_name="trace_worker"),
        run_id=run_id,
    )
    state = launch_state(instance, "starting")
    assert not state.gone and state.launched_at is not None
    assert before - 1 <= state.launched_at <= time.time() + 1

    # started: its start time
    instance.report_dagster_event(
        DagsterEvent(DagsterEventType.PIPELINE_START.value, job_name="trace_worker"),
        run_id=run_id,
    )
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED  # type: ignore[union-attr]
    started = launch_state(instance, "starting")
    assert started.launched_at is not None and started.launched_at >= state.launched_at
