"""The sink sensor: drains the buffer queue into Postgres data inside the tick (bounded)."""

# No `from __future__ import annotations` here: Dagster resolves sensor annotations at runtime.
import time

from dagster import DefaultSensorStatus, SensorEvaluationContext, SensorResult, SkipReason, sensor

from trace_core.runtime import Runtime
from trace_core.sinks.consumer import SinkReport, sink_once
from trace_dagster.resources import TraceResource

MESSAGES_PER_CALL = 10
MAX_CALLS_PER_TICK = 20
TICK_BUDGET_SECONDS = 20.0  # well inside Dagster's 60 s sensor timeout


def sink_tick(
    rt: Runtime,
    *,
    max_calls: int = MAX_CALLS_PER_TICK,
    budget_seconds: float = TICK_BUDGET_SECONDS,
) -> list[SinkReport]:
    """Call ``sink_once`` until the buffer queue is idle, ``max_calls`` or the time budget."""
    reports: list[SinkReport] = []
    deadline = time.monotonic() + budget_seconds
    for _ in range(max_calls):
        report = sink_once(rt, max_messages=MESSAGES_PER_CALL)
        if report.idle:
            break
        reports.append(report)
        if time.monotonic() > deadline:
            break
    return reports


@sensor(
    name="trace_sink",
    minimum_interval_seconds=5,
    default_status=DefaultSensorStatus.RUNNING,
    description="Writes buffered batches (buffer queue pointers) into Postgres data",
)
def sink_sensor(
    context: SensorEvaluationContext, trace: TraceResource
) -> SensorResult | SkipReason:
    reports = sink_tick(trace.get_client())
    if not reports:
        return SkipReason("buffer queue is empty")
    received = sum(r.received for r in reports)
    acked = sum(r.acked for r in reports)
    inserted = sum(r.rows_inserted for r in reports)
    duplicate = sum(r.rows_duplicate for r in reports)
    context.log.info(
        f"sink: {received} message(s), {acked} written, {inserted} row(s) new, "
        f"{duplicate} duplicate"
    )
    for report in reports:
        for error in report.errors:
            context.log.warning(f"sink: message failed: {error}")
    return SensorResult(run_requests=[])
