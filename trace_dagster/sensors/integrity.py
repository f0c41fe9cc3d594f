"""``trace_integrity``: every ``TRACE_INTEGRITY_INTERVAL_SECONDS`` a ``trace_integrity_pass`` run
(unless one is still running)."""

# No `from __future__ import annotations` here: Dagster resolves sensor annotations at runtime.
import json
import time

from dagster import (
    DagsterInstance,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from trace_core.runtime import Runtime
from trace_dagster.integrity import INTEGRITY_JOB, SENSOR_NAME, TICK_SECONDS, integrity_job
from trace_dagster.resources import TraceResource
from trace_dagster.sensors.common import instance_of
from trace_dagster.service_runs import IN_PROGRESS, KIND_TAG


def integrity_request(
    rt: Runtime, cursor: str | None, instance: DagsterInstance | None, now: float | None = None
) -> SensorResult:
    """One sensor tick: request a pass run when one is due and none is in progress.

    The cursor is JSON ``{"next_pass_at": epoch}``; the first pass starts one interval after
    the sensor first runs.
    """
    now = time.time() if now is None else now
    state = json.loads(cursor) if cursor else {}
    next_pass_at = float(state.get("next_pass_at", now + rt.settings.integrity_interval_seconds))
    keep = json.dumps({"next_pass_at": next_pass_at})
    if now < next_pass_at:
        return SensorResult(
            skip_reason=f"next integrity pass in {next_pass_at - now:.0f}s", cursor=keep
        )
    if instance is not None and instance.get_run_records(
        filters=RunsFilter(job_name=INTEGRITY_JOB, statuses=IN_PROGRESS), limit=1
    ):
        return SensorResult(skip_reason="an integrity pass is still running", cursor=keep)
    return SensorResult(
        run_requests=[RunRequest(run_key=f"integrity:{now:.0f}", tags={KIND_TAG: "maintenance"})],
        cursor=json.dumps({"next_pass_at": now + rt.settings.integrity_interval_seconds}),
    )


def integrity_sensor() -> SensorDefinition:
    @sensor(
        name=SENSOR_NAME,
        job=integrity_job,
        minimum_interval_seconds=TICK_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Scheduled integrity_check: every TRACE_INTEGRITY_INTERVAL_SECONDS a run re-verifies "
            "committed ranges (files vs manifests, contiguity, parent hashes, tx/log counts vs "
            "the RPC) and reports each range's `integrity` check on its stream partition"
        ),
    )
    def _integrity(
        context: SensorEvaluationContext, trace: TraceResource
    ) -> SensorResult | SkipReason:
        return integrity_request(trace.get_client(), context.cursor, instance_of(context))

    return _integrity
