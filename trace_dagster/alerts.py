"""The alert delivery sensor: sends new alert events to their channels inside the tick, and
shows what it did on the ``alerts/alert_events`` asset (an observation per tick that worked)."""

# No `from __future__ import annotations` here: Dagster resolves sensor annotations at runtime.
from dagster import (
    AssetKey,
    AssetObservation,
    AssetSpec,
    DefaultSensorStatus,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from trace_core.alerts.delivery import DeliveryReport, deliver_once
from trace_dagster.resources import TraceResource

# Each delivery waits at most its channel's timeout (<= 30 s) and sends run in parallel, so
# one bounded step stays inside Dagster's 60 s sensor timeout.
EVENTS_PER_TICK = 50

ALERT_EVENTS_KEY = AssetKey(["alerts", "alert_events"])
alert_events_spec = AssetSpec(
    key=ALERT_EVENTS_KEY,
    group_name="alerts",
    kinds={"postgres"},
    description=(
        "data.alert_events: one row per alert event (keyed by dedupe_key), written by the "
        "trace_sink sensor from alert_evaluate batches; observations show each delivery tick."
    ),
)


def delivery_result(report: DeliveryReport) -> SensorResult | SkipReason:
    """The tick's outcome: an observation with the counts, or a skip when nothing was due."""
    if not report.did_work:
        return SkipReason("no alert deliveries due")
    metadata = {
        "planned": report.planned,
        "attempted": report.attempted,
        "delivered": report.delivered,
        "retried": report.retried,
        "failed": report.failed,
        "rate_limited": report.rate_limited,
    }
    return SensorResult(
        asset_events=[AssetObservation(asset_key=ALERT_EVENTS_KEY, metadata=metadata)]
    )


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
    if report.did_work:
        context.log.info(f"alert delivery: {report.summary()}")
    return delivery_result(report)
