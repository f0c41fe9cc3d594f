"""Sensor self-monitoring: a failing or late dispatcher or worker sensor shows as a failed asset
check, since Dagster raises no alert on a sensor's own failure (dagster issue 29625).

The external asset ``trace/sensors`` carries one check per watched sensor
(``trace_dispatcher_healthy``, ``trace_worker_wakeups_healthy``). The ``trace_sensor_health``
sensor reads each watched sensor's latest tick from the instance every
``HEALTH_INTERVAL_SECONDS`` and reports the verdict (when it changes, and at least every
``REPORT_EVERY_SECONDS``): failed when the latest tick failed (its error, first line), or when
the latest tick is older than ``LATE_AFTER_SECONDS`` (the sensor is stopped, hangs, or its
code location does not load); passed otherwise. Executing the checks from the UI evaluates
them the same way. If the daemon itself is down no sensor ticks, this one included: Dagster's
Deployment > Daemons page shows that.
"""

# No `from __future__ import annotations` here: Dagster resolves annotations at runtime.
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetSpec,
    DagsterInstance,
    DefaultSensorStatus,
    MetadataValue,
    SensorEvaluationContext,
    SensorResult,
    multi_asset_check,
    sensor,
)
from dagster._core.scheduler.instigation import (  # not exported by dagster
    InstigatorStatus,
    InstigatorType,
    TickStatus,
)

from trace_dagster.sensors.common import instance_of

SENSOR_NAME = "trace_sensor_health"
SENSORS_ASSET = AssetKey(["trace", "sensors"])
WATCHED = ("trace_dispatcher", "trace_worker_wakeups")
HEALTH_INTERVAL_SECONDS = 30
# Both watched sensors tick every 5 s; a minute without a tick is not load, it is a stop.
LATE_AFTER_SECONDS = 120.0
REPORT_EVERY_SECONDS = 600.0


def check_name(sensor_name: str) -> str:
    return f"{sensor_name}_healthy"


@dataclass(frozen=True)
class SensorHealth:
    """One watched sensor's verdict and why."""

    sensor: str
    passed: bool
    summary: str
    last_tick_at: float | None = None
    last_status: str | None = None
    kind: str = "ok"  # ok, never, stopped, late, or "failed: <error>": a change is reported

    def metadata(self) -> dict[str, Any]:
        return {
            "sensor": self.sensor,
            "last_tick_status": self.last_status or "none",
            "last_tick_age_s": (
                MetadataValue.text("never")
                if self.last_tick_at is None
                else MetadataValue.float(round(time.time() - self.last_tick_at, 1))
            ),
        }


_FRAMEWORK_ERRORS = ("SensorExecutionError", "DagsterUserCodeProcessError")


def _error_line(tick: object) -> str:
    """``Kind: message`` of the sensor's own error: the first in the tick's error chain that is
    not Dagster's wrapper (Trace's error, not the driver error it was translated from)."""
    error = getattr(tick, "error", None)
    while error is not None and str(getattr(error, "cls_name", "")) in _FRAMEWORK_ERRORS:
        if getattr(error, "cause", None) is None:
            break
        error = error.cause
    text = str(getattr(error, "message", "") or "").strip()
    return text.splitlines()[0] if text else "unknown error"


def sensor_health(instance: DagsterInstance, name: str, now: float | None = None) -> SensorHealth:
    """The verdict on sensor ``name`` from its latest tick in ``instance``."""
    now = time.time() if now is None else now
    states = [
        s
        for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        if s.instigator_name == name
    ]
    never = f"{name} has never ticked (is the daemon running?)"
    if not states:
        return SensorHealth(name, False, never, kind="never")
    state = states[0]
    if state.status == InstigatorStatus.STOPPED:
        stopped = f"{name} is stopped: start it on the Automation page"
        return SensorHealth(name, False, stopped, kind="stopped")
    ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
    if not ticks:
        return SensorHealth(name, False, never, kind="never")
    tick = ticks[0]
    status, at = tick.status, tick.timestamp
    age = now - at
    if status == TickStatus.FAILURE:
        error = _error_line(tick)
        summary = f"{name} failed its last tick: {error}"
        return SensorHealth(name, False, summary, at, status.value, kind=f"failed: {error}")
    if age > LATE_AFTER_SECONDS:
        summary = f"{name} is late: last tick {age:.0f} s ago (expected every few seconds)"
        return SensorHealth(name, False, summary, at, status.value, kind="late")
    return SensorHealth(
        name, True, f"{name} ticked {age:.0f} s ago ({status.value})", at, status.value
    )


def evaluation(h: SensorHealth) -> AssetCheckEvaluation:
    return AssetCheckEvaluation(
        asset_key=SENSORS_ASSET,
        check_name=check_name(h.sensor),
        passed=h.passed,
        severity=AssetCheckSeverity.ERROR,
        description=h.summary,
        metadata=h.metadata(),
    )


def health_result(
    instance: DagsterInstance | None, cursor: str | None, now: float | None = None
) -> SensorResult:
    """One watchdog tick: report each watched sensor's verdict when its kind changed (ok, never,
    stopped, late, failed with another error) or has not been reported for
    ``REPORT_EVERY_SECONDS``. The cursor is JSON ``{sensor: [kind, reported_at]}``."""
    now = time.time() if now is None else now
    if instance is None:
        return SensorResult(skip_reason="no Dagster instance to read ticks from")
    last: dict[str, list[Any]] = json.loads(cursor) if cursor else {}
    events: list[AssetCheckEvaluation] = []
    lines: list[str] = []
    state: dict[str, list[Any]] = {}
    for name in WATCHED:
        h = sensor_health(instance, name, now)
        lines.append(("ok: " if h.passed else "FAILING: ") + h.summary)
        prev = last.get(name)
        if prev is None or prev[0] != h.kind or now - float(prev[1]) >= REPORT_EVERY_SECONDS:
            events.append(evaluation(h))
            state[name] = [h.kind, now]
        else:
            state[name] = prev
    return SensorResult(asset_events=events, cursor=json.dumps(state), skip_reason="\n".join(lines))


# The external asset the checks hang on (nothing materializes it).
sensors_spec = AssetSpec(
    SENSORS_ASSET,
    group_name="trace",
    description="Trace's own sensors; its checks fail when the dispatcher or the worker "
    "sensor fails or stops ticking (reported by the trace_sensor_health sensor)",
)


@multi_asset_check(
    specs=[
        AssetCheckSpec(
            check_name(n),
            asset=SENSORS_ASSET,
            description=f"{n}'s latest tick succeeded or skipped within {LATE_AFTER_SECONDS:.0f} s",
        )
        for n in WATCHED
    ],
    name="trace_sensor_health_checks",
    can_subset=True,
)
def sensor_health_checks(context: AssetCheckExecutionContext) -> Iterator[AssetCheckResult]:
    """Executed from the UI: the same verdicts, now."""
    for key in context.selected_asset_check_keys:
        name = key.name.removesuffix("_healthy")
        h = sensor_health(context.instance, name)
        yield AssetCheckResult(
            asset_key=SENSORS_ASSET,
            check_name=key.name,
            passed=h.passed,
            severity=AssetCheckSeverity.ERROR,
            description=h.summary,
            metadata=h.metadata(),
        )


@sensor(
    name=SENSOR_NAME,
    minimum_interval_seconds=HEALTH_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description="Fails the trace/sensors checks when trace_dispatcher or trace_worker_wakeups "
    "fails a tick or stops ticking (Dagster has no alert on a sensor's own failure)",
)
def sensor_health_sensor(context: SensorEvaluationContext) -> SensorResult:
    return health_result(instance_of(context), context.cursor)
