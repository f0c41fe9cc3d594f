"""The sensors that keep each service's run alive (``trace_hot_follower``,
``trace_hot_compactor``, ``trace_sink``, ``trace_alert_delivery``): a run is requested when the
service has work, nobody holds its lease and no run of its job is starting."""

# No `from __future__ import annotations` here: Dagster resolves sensor annotations at runtime.
import time
from datetime import UTC, datetime, timedelta

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    JobDefinition,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from trace_core.engine import services
from trace_core.engine.intake import ORG_TAG
from trace_core.engine.service_steps import ALERT_DELIVERY, COMPACTOR, FOLLOWER, SINK
from trace_core.engine.services import ServiceSpec
from trace_core.runtime import Runtime
from trace_dagster.console import with_console
from trace_dagster.resources import TraceResource
from trace_dagster.sensors.common import instance_of
from trace_dagster.service_runs import (
    KIND_TAG,
    SERVICE_TAG,
    STARTING,
    alert_delivery_job,
    hot_compactor_job,
    hot_follower_job,
    job_name,
    op_name,
    sensor_name,
    sink_job,
)

KEEPER_INTERVAL_SECONDS = 5


def _starting(instance: DagsterInstance, job_name: str, within_seconds: float) -> str | None:
    """The id of a run of ``job_name`` that is queued or starting, or started in the last
    ``within_seconds`` (it may not hold the lease yet)."""
    records = instance.get_run_records(
        filters=RunsFilter(job_name=job_name, statuses=[*STARTING, DagsterRunStatus.STARTED]),
        limit=10,
    )
    recent = datetime.now(UTC) - timedelta(seconds=within_seconds)
    for record in records:
        run = record.dagster_run
        if run.status in STARTING or record.create_timestamp >= recent:
            return run.run_id
    return None


def keeper_result(
    rt: Runtime, spec: ServiceSpec, instance: DagsterInstance | None
) -> SensorResult | SkipReason:
    """Request a run of ``spec``'s job if it has work and nobody serves it."""
    if not services.has_work(rt, spec.name):
        return SkipReason(f"{spec.name}: nothing to do")
    holder = services.holder(rt, spec.name)
    if holder is not None:
        return SkipReason(f"{spec.name}: run {holder} is serving")
    if instance is not None:
        starting = _starting(instance, job_name(spec), rt.settings.lease_seconds)
        if starting is not None:
            return SkipReason(f"{spec.name}: run {starting} is starting")
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=f"{spec.name}:{time.time():.3f}",
                run_config=with_console(
                    {
                        "ops": {
                            op_name(spec): {
                                "config": {"max_seconds": float(rt.settings.service_run_seconds)}
                            }
                        }
                    }
                ),
                tags={
                    KIND_TAG: "service",
                    SERVICE_TAG: spec.name,
                    "dagster/max_retries": "2",
                    ORG_TAG: rt.home_org_id,  # a system service: every org's, as the deployment
                },
            )
        ]
    )


def service_sensor(spec: ServiceSpec, service_job_def: JobDefinition) -> SensorDefinition:
    """The sensor that keeps ``spec``'s run alive."""

    @sensor(
        name=sensor_name(spec),
        job=service_job_def,
        minimum_interval_seconds=KEEPER_INTERVAL_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Keeps a {job_name(spec)} run serving while there is work: {spec.description}",
    )
    def _sensor(
        context: SensorEvaluationContext, trace: TraceResource
    ) -> SensorResult | SkipReason:
        return keeper_result(trace.get_client(), spec, instance_of(context))

    return _sensor


hot_follower_sensor = service_sensor(FOLLOWER, hot_follower_job)
hot_compactor_sensor = service_sensor(COMPACTOR, hot_compactor_job)
sink_sensor = service_sensor(SINK, sink_job)
alert_delivery_sensor = service_sensor(ALERT_DELIVERY, alert_delivery_job)
