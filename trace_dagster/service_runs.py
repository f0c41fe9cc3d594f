"""Long-lived service runs and the sensors that keep them alive.

The hot follower, hot compactor, sink drain and alert delivery each run as a Dagster job
whose one op loops a bounded *step* every few seconds for ``TRACE_SERVICE_RUN_SECONDS``, so
their work shows in run history with logs and retries and goes wherever the run launcher
sends runs. The op holds its service's lease (``trace_core.services``), renewed while it
runs: a second run finds the lease held and ends at once, and a run that dies lets it lapse.

Each service's sensor (same names as before: ``trace_hot_follower``, ...) requests a run
when the service has work, nobody holds the lease and no run of its job is starting. Sink
and alert delivery runs end after ``TRACE_SERVICE_IDLE_EXIT_SECONDS`` without work. Under
``trace-lite run --until-idle`` the driver runs each requested service run for one step.
"""

# No `from __future__ import annotations` here: Dagster resolves op/sensor annotations at runtime.
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import (
    AssetObservation,
    Config,
    DagsterInstance,
    DagsterInvariantViolationError,
    DagsterRunStatus,
    DefaultSensorStatus,
    JobDefinition,
    OpExecutionContext,
    RetryPolicy,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    in_process_executor,
    job,
    op,
    sensor,
)
from pydantic import Field

from trace_core import services
from trace_core.runtime import Runtime
from trace_core.services import ServiceName
from trace_dagster.resources import TraceResource

KIND_TAG = "trace/kind"
SERVICE_TAG = "trace/service"
KEEPER_INTERVAL_SECONDS = 5
# Runs not yet holding the lease: queued or starting, or started so recently that the op may
# not have taken the lease yet.
_STARTING = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING]
# Runs that have not ended.
IN_PROGRESS = [*_STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]


@dataclass(frozen=True)
class StepReport:
    """One bounded step of a service: whether it did work, a line saying what, the asset
    observations to record, and the cursor to hand the next step."""

    worked: bool
    summary: str
    events: list[AssetObservation] = field(default_factory=list)
    cursor: str | None = None


Step = Callable[[Runtime, str | None, logging.Logger], StepReport]


@dataclass(frozen=True)
class ServiceSpec:
    name: ServiceName
    step: Step
    interval_seconds: float
    description: str
    exit_when_idle: bool = False

    @property
    def job_name(self) -> str:
        return f"trace_{self.name}_service"

    @property
    def op_name(self) -> str:
        return f"{self.name}_loop"

    @property
    def sensor_name(self) -> str:
        return f"trace_{self.name}"


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


def serve(
    rt: Runtime,
    spec: ServiceSpec,
    holder: str,
    max_seconds: float,
    log: logging.Logger,
    emit: Callable[[AssetObservation], None],
) -> int:
    """Hold ``spec``'s lease and run its step every ``interval_seconds`` until
    ``max_seconds`` (0: one step), idleness (``exit_when_idle``) or a lost lease.

    Returns the number of steps taken (0 when another run holds the lease).
    """
    if not services.acquire(rt, spec.name, holder):
        log.info(f"{spec.name}: another run holds the service lease; ending")
        return 0
    steps = 0
    try:
        started = last_work = time.monotonic()
        cursor: str | None = None
        while True:
            report = spec.step(rt, cursor, log)
            steps += 1
            cursor = report.cursor or cursor
            for event in report.events:
                emit(event)
            now = time.monotonic()
            if report.worked:
                log.info(f"{spec.name}: {report.summary}")
                last_work = now
            if max_seconds <= 0 or now - started >= max_seconds:
                break
            if spec.exit_when_idle and now - last_work >= rt.settings.service_idle_exit_seconds:
                log.info(f"{spec.name}: idle for {now - last_work:.0f} s; ending")
                break
            if not _wait_renewing(rt, spec, holder, spec.interval_seconds):
                log.warning(f"{spec.name}: service lease lost to another run; ending")
                break
    finally:
        services.release(rt, spec.name, holder)
    return steps


def _wait_renewing(rt: Runtime, spec: ServiceSpec, holder: str, seconds: float) -> bool:
    """Sleep ``seconds``, renewing the lease at least every heartbeat; False once it is lost."""
    deadline = time.monotonic() + seconds
    while True:
        if not services.renew(rt, spec.name, holder):
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return True
        time.sleep(min(remaining, rt.settings.heartbeat_seconds))


def service_job(spec: ServiceSpec) -> JobDefinition:
    """The job of one service: one op that serves (retried on failure, like any op)."""

    @op(
        name=spec.op_name,
        description=spec.description,
        retry_policy=RetryPolicy(max_retries=3, delay=5),
    )
    def _loop(context: OpExecutionContext, config: ServiceRunConfig, trace: TraceResource) -> None:
        steps = serve(
            trace.get_client(),
            spec,
            context.run_id,
            config.max_seconds,
            context.log,  # type: ignore[arg-type]  # DagsterLogManager logs like a Logger
            context.log_event,
        )
        context.log.info(f"{spec.name}: {steps} step(s)")

    @job(
        name=spec.job_name,
        description=spec.description,
        tags={KIND_TAG: "service"},
        executor_def=in_process_executor,  # one op: no second process per run
    )
    def _job() -> None:
        _loop()

    return _job


def _instance(context: SensorEvaluationContext) -> DagsterInstance | None:
    try:
        return context.instance
    except DagsterInvariantViolationError:  # a context built in a test without an instance
        return None


def _starting(instance: DagsterInstance, job_name: str, within_seconds: float) -> str | None:
    """The id of a run of ``job_name`` that is queued or starting, or started in the last
    ``within_seconds`` (it may not hold the lease yet)."""
    records = instance.get_run_records(
        filters=RunsFilter(job_name=job_name, statuses=[*_STARTING, DagsterRunStatus.STARTED]),
        limit=10,
    )
    recent = datetime.now(UTC) - timedelta(seconds=within_seconds)
    for record in records:
        run = record.dagster_run
        if run.status in _STARTING or record.create_timestamp >= recent:
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
        starting = _starting(instance, spec.job_name, rt.settings.lease_seconds)
        if starting is not None:
            return SkipReason(f"{spec.name}: run {starting} is starting")
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=f"{spec.name}:{time.time():.3f}",
                run_config={
                    "ops": {
                        spec.op_name: {
                            "config": {"max_seconds": float(rt.settings.service_run_seconds)}
                        }
                    }
                },
                tags={KIND_TAG: "service", SERVICE_TAG: spec.name, "dagster/max_retries": "2"},
            )
        ]
    )


def service_sensor(spec: ServiceSpec, service_job_def: JobDefinition) -> SensorDefinition:
    """The sensor that keeps ``spec``'s run alive."""

    @sensor(
        name=spec.sensor_name,
        job=service_job_def,
        minimum_interval_seconds=KEEPER_INTERVAL_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Keeps a {spec.job_name} run serving while there is work: {spec.description}",
    )
    def _sensor(
        context: SensorEvaluationContext, trace: TraceResource
    ) -> SensorResult | SkipReason:
        return keeper_result(trace.get_client(), spec, _instance(context))

    return _sensor
