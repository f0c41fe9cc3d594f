"""The alert delivery service: a run (kept alive by the ``trace_alert_delivery`` sensor while
deliveries are due) that sends new alert events to their channels, and shows what it did on
the ``alerts/alert_events`` asset (an observation per step that worked)."""

# No `from __future__ import annotations` here: Dagster resolves sensor annotations at runtime.
import logging

from dagster import AssetKey, AssetObservation, AssetSpec

from trace_core.alerts.delivery import deliver_once
from trace_core.runtime import Runtime
from trace_dagster.service_runs import ServiceSpec, StepReport, service_job, service_sensor

DELIVERY_INTERVAL_SECONDS = 1.0

# Each delivery waits at most its channel's timeout (<= 30 s) and sends run in parallel, so
# one bounded step takes at most about that long.
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


def delivery_step(rt: Runtime, cursor: str | None, log: logging.Logger) -> StepReport:
    """One bounded delivery step; an observation of ``alerts/alert_events`` when it worked."""
    report = deliver_once(rt, max_events=EVENTS_PER_TICK)
    if not report.did_work:
        return StepReport(False, "no alert deliveries due")
    metadata = {
        "planned": report.planned,
        "attempted": report.attempted,
        "delivered": report.delivered,
        "retried": report.retried,
        "failed": report.failed,
        "rate_limited": report.rate_limited,
    }
    return StepReport(
        True,
        f"alert delivery: {report.summary()}",
        [AssetObservation(asset_key=ALERT_EVENTS_KEY, metadata=metadata)],
    )


ALERT_DELIVERY = ServiceSpec(
    name="alert_delivery",
    step=delivery_step,
    interval_seconds=DELIVERY_INTERVAL_SECONDS,
    description="Delivers new alert events to their webhooks and logs, with retries and rate limits",
    exit_when_idle=True,
)
alert_delivery_job = service_job(ALERT_DELIVERY)
alert_delivery_sensor = service_sensor(ALERT_DELIVERY, alert_delivery_job)
