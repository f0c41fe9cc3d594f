"""Everything Dagster loads (workspace.yaml points here): ``defs``.

Loading definitions reads applied jobs from state and never migrates it: ``trace-lite up``,
``trace-lite migrate`` (and every CLI command that writes state) do. Against an unmigrated or
unreachable state the definitions still load, with no stream assets and a log line saying why.
"""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from trace_core.engine.intake import ORG_TAG
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_dagster.analytics import analytics_definitions, duckdb_resource
from trace_dagster.console import LOGGERS
from trace_dagster.integrity import integrity_job, stream_integrity_checks
from trace_dagster.jobs import trace_worker
from trace_dagster.partitions import stream_assets
from trace_dagster.resources import TraceResource
from trace_dagster.sensors import service_sensors
from trace_dagster.sensors.analytics import analytics_sensor
from trace_dagster.sensors.dispatcher import dispatcher_sensor
from trace_dagster.sensors.health import sensor_health_checks, sensor_health_sensor, sensors_spec
from trace_dagster.sensors.integrity import integrity_sensor
from trace_dagster.sensors.worker import worker_sensor
from trace_dagster.service_runs import SERVICE_JOBS, alert_events_spec
from trace_dagster.transforms import trace_trigger, transform_definitions


def build_definitions(runtime: Runtime | None = None) -> Definitions:
    """Definitions for a runtime (default: from the environment). Stream assets come from state."""
    rt = runtime or Runtime(load_settings())
    analytics, analytics_jobs = analytics_definitions(rt)
    transforms, schedules = transform_definitions(rt)
    defs = Definitions(
        assets=[*stream_assets(rt), alert_events_spec, sensors_spec, *analytics, *transforms],
        jobs=[trace_worker, *SERVICE_JOBS, integrity_job, *analytics_jobs, trace_trigger],
        schedules=schedules,
        asset_checks=[*stream_integrity_checks(rt), sensor_health_checks],
        sensors=[
            dispatcher_sensor,
            worker_sensor,
            sensor_health_sensor,
            *service_sensors,
            integrity_sensor(),
            analytics_sensor(analytics_jobs),
        ],
        resources={"trace": TraceResource(), "duckdb": duckdb_resource(rt)},
        # partition materializations from the UI (the implicit asset job) and every job
        # without its own executor run in the run's process: no subprocess start-up per step
        executor=in_process_executor,
        loggers=LOGGERS,  # an error as one console line; the event log keeps the stack
    )
    # every asset names its org (worker runs do too, from their tasks: engine.intake); the
    # deployment's own unless it names another (another org's stream assets)
    org = str(rt.settings.org_id)
    return defs.map_resolved_asset_specs(
        func=lambda spec: (
            spec if ORG_TAG in spec.tags else spec.merge_attributes(tags={ORG_TAG: org})
        )
    )


def __getattr__(name: str) -> Definitions:
    """``defs`` is built on first access (workspace.yaml loads it), not at import time,
    so importing this module in tests or tools never touches a database."""
    if name == "defs":
        built = build_definitions()
        globals()["defs"] = built
        return built
    raise AttributeError(name)
