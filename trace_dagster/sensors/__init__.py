"""Sensors: each body maps one trace_core report to a ``SensorResult`` (``dispatcher``,
``worker``, ``services``, ``integrity``, ``analytics``, ``health``: the watchdog of the first two)."""

from trace_dagster.sensors.services import (
    alert_delivery_sensor,
    hot_compactor_sensor,
    hot_follower_sensor,
    sink_sensor,
)

service_sensors = [sink_sensor, hot_follower_sensor, hot_compactor_sensor, alert_delivery_sensor]
