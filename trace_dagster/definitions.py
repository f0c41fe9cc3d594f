"""Everything Dagster loads (workspace.yaml points here): ``defs``."""

from __future__ import annotations

from dagster import Definitions

from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_dagster.alerts import alert_delivery_job, alert_delivery_sensor, alert_events_spec
from trace_dagster.hot import (
    hot_compactor_job,
    hot_compactor_sensor,
    hot_follower_job,
    hot_follower_sensor,
)
from trace_dagster.integrity import integrity_job, integrity_sensor, stream_integrity_checks
from trace_dagster.jobs import trace_worker
from trace_dagster.partitions import stream_assets
from trace_dagster.resources import TraceResource
from trace_dagster.sensors import dispatcher_sensor, worker_sensor
from trace_dagster.sinks import sink_job, sink_sensor


def build_definitions(runtime: Runtime | None = None) -> Definitions:
    """Definitions for a runtime (default: from the environment). Stream assets come from state."""
    rt = runtime or Runtime(load_settings())
    return Definitions(
        assets=[*stream_assets(rt), alert_events_spec],
        jobs=[
            trace_worker,
            hot_follower_job,
            hot_compactor_job,
            sink_job,
            alert_delivery_job,
            integrity_job,
        ],
        asset_checks=stream_integrity_checks(rt),
        sensors=[
            dispatcher_sensor,
            worker_sensor,
            sink_sensor,
            hot_follower_sensor,
            hot_compactor_sensor,
            alert_delivery_sensor,
            integrity_sensor(),
        ],
        resources={"trace": TraceResource()},
    )


def __getattr__(name: str) -> Definitions:
    """``defs`` is built on first access (workspace.yaml loads it), not at import time,
    so importing this module in tests or tools never touches a database."""
    if name == "defs":
        built = build_definitions()
        globals()["defs"] = built
        return built
    raise AttributeError(name)
