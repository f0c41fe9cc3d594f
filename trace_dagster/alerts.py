"""The alert delivery sensor: sends new alert events to their channels inside the tick."""

# No `from __future__ import annotations` here: Dagster resolves sensor annotations at runtime.
from dagster import DefaultSensorStatus, SensorEvaluationContext, SensorResult, SkipReason, sensor

from trace_core.alerts.delivery import deliver_once
from trace_dagster.resources import TraceResource

# Each delivery waits at most its channel's timeout (<= 30 s) and sends run in parallel, so
# one bounded step stays inside Dagster's 60 s sensor timeout.
EVENTS_PER_TICK = 50


@sensor(
    name="trace_alert_delivery",
    minimum_interval_seconds=5,
    default_status=DefaultSensorStatus.RUNNING,
    description="Delivers new alert events to their webhooks and logs, with retries and rate limits",
)
def alert_delivery_sensor(
    context: SensorEvaluationContext, trace: TraceResource
) -> SensorResult | SkipReason:
    report = deliver_once(trace.get_client(), max_events=EVENTS_PER_TICK)
    if not report.did_work:
        return SkipReason("no alert deliveries due")
    context.log.info(f"alert delivery: {report.summary()}")
    return SensorResult(run_requests=[])
