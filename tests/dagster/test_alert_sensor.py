"""The alert delivery sensor through Dagster's harness: a due event makes it request a delivery
run, which delivers it and shows as an observation of ``alerts/alert_events``; nothing due skips."""

from __future__ import annotations

from dagster import (
    DagsterInstance,
    SensorResult,
    SkipReason,
    build_sensor_context,
)

from tests.dagster.conftest import run_one_step
from tests.integration.test_alerts_delivery import add_event, deliveries, setup_alert
from trace_core.runtime import Runtime
from trace_dagster.definitions import build_definitions
from trace_dagster.resources import TraceResource
from trace_dagster.sensors.services import alert_delivery_sensor
from trace_dagster.service_runs import ALERT_EVENTS_KEY, alert_delivery_job


def _tick(instance: DagsterInstance) -> SensorResult | SkipReason:
    with build_sensor_context(instance=instance, resources={"trace": TraceResource()}) as ctx:
        result = alert_delivery_sensor(ctx)
    assert isinstance(result, SensorResult | SkipReason)
    return result


def _deliver(instance: DagsterInstance, result: SensorResult | SkipReason) -> None:
    """Run the requested alert delivery run for one step, as the driver does."""
    assert isinstance(result, SensorResult)
    (request,) = result.run_requests
    run_one_step(alert_delivery_job, request, instance)


def test_delivery_run_delivers_and_is_observed(
    trace_env: Runtime, dagster_instance: DagsterInstance
) -> None:
    assert ALERT_EVENTS_KEY in build_definitions(trace_env).resolve_all_asset_keys()
    setup_alert(trace_env, "  - log: {}")
    assert isinstance(_tick(dagster_instance), SkipReason)  # nothing due yet
    key = add_event(trace_env.dbs, 7)

    _deliver(dagster_instance, _tick(dagster_instance))
    (record,) = dagster_instance.fetch_observations(ALERT_EVENTS_KEY, limit=10).records
    event = record.asset_observation
    assert event is not None and event.asset_key == ALERT_EVENTS_KEY
    assert event.metadata["delivered"].value == 1 and event.metadata["failed"].value == 0
    assert [(d["dedupe_key"], d["status"]) for d in deliveries(trace_env.dbs)] == [
        (key, "delivered")
    ]

    assert isinstance(_tick(dagster_instance), SkipReason)  # delivered once, never again
