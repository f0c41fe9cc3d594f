"""The alert delivery sensor through Dagster's sensor harness: a due event is delivered in the
tick and shows as an observation of ``alerts/alert_events``; nothing due is a skip."""

from __future__ import annotations

from dagster import (
    AssetObservation,
    DagsterInstance,
    SensorResult,
    SkipReason,
    build_sensor_context,
)

from tests.integration.test_alerts_delivery import add_event, deliveries, setup_alert
from trace_core.runtime import Runtime
from trace_dagster.alerts import ALERT_EVENTS_KEY, alert_delivery_sensor
from trace_dagster.definitions import build_definitions
from trace_dagster.resources import TraceResource


def _tick(instance: DagsterInstance) -> SensorResult | SkipReason:
    with build_sensor_context(instance=instance, resources={"trace": TraceResource()}) as ctx:
        result = alert_delivery_sensor(ctx)
    assert isinstance(result, SensorResult | SkipReason)
    return result


def test_delivery_tick_delivers_and_is_observed(
    trace_env: Runtime, dagster_instance: DagsterInstance
) -> None:
    assert ALERT_EVENTS_KEY in build_definitions(trace_env).resolve_all_asset_keys()
    setup_alert(trace_env, "  - log: {}")
    assert isinstance(_tick(dagster_instance), SkipReason)  # nothing due yet
    key = add_event(trace_env.dbs, 7)

    result = _tick(dagster_instance)
    assert isinstance(result, SensorResult)
    (event,) = result.asset_events
    assert isinstance(event, AssetObservation) and event.asset_key == ALERT_EVENTS_KEY
    assert event.metadata["delivered"].value == 1 and event.metadata["failed"].value == 0
    assert [(d["dedupe_key"], d["status"]) for d in deliveries(trace_env.dbs)] == [
        (key, "delivered")
    ]

    assert isinstance(_tick(dagster_instance), SkipReason)  # delivered once, never again
