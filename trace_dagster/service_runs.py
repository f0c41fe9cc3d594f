"""Long-lived service runs and the sensors that keep them alive.

The hot follower, hot compactor, sink drain and alert delivery each run as a Dagster job
whose one op loops a bounded *step* every few seconds for ``TRACE_SERVICE_RUN_SECONDS``, so
their work shows in run history with logs and retries and goes wherever the run launcher
sends runs. The op holds its service's lease (``trace_core.engine.services``), renewed while it
runs: a second run finds the lease held and ends at once, and a run that dies lets it lapse.

Each service's sensor (``trace_dagster.sensors.services``: ``trace_hot_follower``, ...)
requests a run when the service has work, nobody holds the lease and no run of its job is
starting. Sink and alert delivery runs end after ``TRACE_SERVICE_IDLE_EXIT_SECONDS`` without
work. Under ``trace-lite run --until-idle`` the driver runs each requested service run for
one step. The steps themselves are ``trace_core.engine.service_steps``.
"""

# No `from __future__ import annotations` here: Dagster resolves op/sensor annotations at runtime.
from collections.abc import Mapping
from typing import Any

from dagster import (
    AssetKey,
    AssetObservation,
    AssetSpec,
    Config,
    DagsterExecutionInterruptedError,
    DagsterRunStatus,
    JobDefinition,
    OpExecutionContext,
    RetryPolicy,
    in_process_executor,
    job,
    op,
)
from pydantic import Field

from trace_core.engine import services
from trace_core.engine.service_steps import (
    ALERT_DELIVERY,
    ALERT_EVENTS_PATH,
    COMPACTOR,
    FOLLOWER,
    SINK,
)
from trace_core.engine.services import Observation, ServiceSpec
from trace_dagster.resources import TraceResource

KIND_TAG = "trace/kind"
SERVICE_TAG = "trace/service"
# Runs not yet holding the lease: queued or starting, or started so recently that the op may
# not have taken the lease yet.
STARTING = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING]
# Runs that have not ended.
IN_PROGRESS = [*STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]


def job_name(spec: ServiceSpec) -> str:
    return f"trace_{spec.name}_service"


def op_name(spec: ServiceSpec) -> str:
    return f"{spec.name}_loop"


def sensor_name(spec: ServiceSpec) -> str:
    return f"trace_{spec.name}"


def asset_observation(observation: Observation) -> AssetObservation:
    return AssetObservation(
        asset_key=AssetKey(list(observation.asset_path)), metadata=observation.metadata
    )


class ServiceRunConfig(Config):
    max_seconds: float = Field(
        600.0, description="How long the run serves before ending; 0 runs one step and ends"
    )


def one_step(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """``run_config`` of a service run, changed to run one step (the foreground driver)."""
    ops = {
        name: {**body, "config": {**(body.get("config") or {}), "max_seconds": 0}}
        for name, body in (run_config.get("ops") or {}).items()
    }
    return {**run_config, "ops": ops}


def service_job(spec: ServiceSpec) -> JobDefinition:
    """The job of one service: one op that serves (retried on failure, like any op)."""

    @op(
        name=op_name(spec),
        description=spec.description,
        retry_policy=RetryPolicy(max_retries=3, delay=5),
    )
    def _loop(context: OpExecutionContext, config: ServiceRunConfig, trace: TraceResource) -> None:
        try:
            steps = services.serve(
                trace.get_client(),
                spec,
                context.run_id,
                config.max_seconds,
                context.log,  # type: ignore[arg-type]  # DagsterLogManager logs like a Logger
                lambda observation: context.log_event(asset_observation(observation)),
            )
        except DagsterExecutionInterruptedError:
            # SIGTERM/SIGINT (`dagster dev` stopping, a terminated run): end now, lease released.
            # Left to Dagster, the op's RetryPolicy turns the interrupt into a retry and the
            # service keeps running until its process group is killed.
            context.log.info(f"{spec.name}: interrupted; ending")
            return
        context.log.info(f"{spec.name}: {steps} step(s)")

    @job(
        name=job_name(spec),
        description=spec.description,
        tags={KIND_TAG: "service"},
        executor_def=in_process_executor,  # one op: no second process per run
    )
    def _job() -> None:
        _loop()

    return _job


hot_follower_job = service_job(FOLLOWER)
hot_compactor_job = service_job(COMPACTOR)
sink_job = service_job(SINK)
alert_delivery_job = service_job(ALERT_DELIVERY)
SERVICE_JOBS = (hot_follower_job, hot_compactor_job, sink_job, alert_delivery_job)

# data.alert_events, observed by every alert delivery step that worked.
ALERT_EVENTS_KEY = AssetKey(list(ALERT_EVENTS_PATH))
alert_events_spec = AssetSpec(
    key=ALERT_EVENTS_KEY,
    group_name="alerts",
    kinds={"postgres"},
    description=(
        "data.alert_events: one row per alert event (keyed by dedupe_key), written by the "
        "trace_sink sensor from alert_evaluate batches; observations show each delivery tick."
    ),
)
