"""``trace_integrity``: a ``trace_integrity_pass`` run soon after ranges commit and every
``TRACE_INTEGRITY_INTERVAL_SECONDS`` (unless one is still running)."""

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

from trace_core.engine.intake import ORG_TAG
from trace_core.engine.integrity import versions_committed_since
from trace_core.runtime import Runtime
from trace_dagster.integrity import INTEGRITY_JOB, SENSOR_NAME, TICK_SECONDS, integrity_job
from trace_dagster.resources import TraceResource
from trace_dagster.sensors.common import instance_of
from trace_dagster.service_runs import IN_PROGRESS, KIND_TAG

# After the first pass, newly committed ranges start a pass this soon after the previous one
# (instead of waiting for TRACE_INTEGRITY_INTERVAL_SECONDS).
NEW_RANGES_GAP_SECONDS = 300.0


def integrity_request(
    rt: Runtime, cursor: str | None, instance: DagsterInstance | None, now: float | None = None
) -> SensorResult:
    """One sensor tick: request a pass run when one is due and none is in progress.

    A pass is due when ranges were committed since the last pass (the first pass: as soon as
    any range is committed; later ones at most every ``NEW_RANGES_GAP_SECONDS``), and in any
    case every ``TRACE_INTEGRITY_INTERVAL_SECONDS`` (the rolling sample of older ranges). The
    cursor is JSON ``{"next_pass_at": epoch, "last_pass_at": epoch}``.
    """
    now = time.time() if now is None else now
    interval = rt.settings.integrity_interval_seconds
    state = json.loads(cursor) if cursor else {}
    next_pass_at = float(state.get("next_pass_at", now + interval))
    last = state.get("last_pass_at")
    last_pass_at = None if last is None else float(last)
    keep = json.dumps({"next_pass_at": next_pass_at, "last_pass_at": last_pass_at})
    why = "scheduled" if now >= next_pass_at else None
    if why is None and (last_pass_at is None or now - last_pass_at >= NEW_RANGES_GAP_SECONDS):
        new = versions_committed_since(rt, last_pass_at or 0.0)
        if new:
            why = f"{new} range version(s) committed since the last pass"
    if why is None:
        soon = "" if last_pass_at is None else " (sooner once new ranges commit)"
        return SensorResult(
            skip_reason=f"next integrity pass in {next_pass_at - now:.0f}s{soon}", cursor=keep
        )
    if instance is not None and instance.get_run_records(
        filters=RunsFilter(job_name=INTEGRITY_JOB, statuses=IN_PROGRESS), limit=1
    ):
        return SensorResult(skip_reason="an integrity pass is still running", cursor=keep)
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=f"integrity:{now:.0f}",
                tags={
                    KIND_TAG: "maintenance",
                    "trace/integrity_reason": _tag_value(why),
                    ORG_TAG: str(rt.settings.org_id),
                },
            )
        ],
        cursor=json.dumps({"next_pass_at": now + interval, "last_pass_at": now}),
    )


def _tag_value(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in text)[:63]


def integrity_sensor() -> SensorDefinition:
    @sensor(
        name=SENSOR_NAME,
        job=integrity_job,
        minimum_interval_seconds=TICK_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Scheduled integrity_check: soon after ranges commit (then at most every 5 min) and "
            "every TRACE_INTEGRITY_INTERVAL_SECONDS a run re-verifies "
            "committed ranges (files vs manifests, contiguity, parent hashes, tx/log counts vs "
            "the RPC) and reports each range's `integrity` check on its stream partition"
        ),
    )
    def _integrity(
        context: SensorEvaluationContext, trace: TraceResource
    ) -> SensorResult | SkipReason:
        return integrity_request(trace.get_client(), context.cursor, instance_of(context))

    return _integrity
