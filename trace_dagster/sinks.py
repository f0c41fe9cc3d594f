"""The sink service: a run (kept alive by the ``trace_sink`` sensor while the buffer queue
has messages) that drains the buffer queue into Postgres data in bounded steps."""

# No `from __future__ import annotations` here: Dagster resolves sensor annotations at runtime.
import logging
import time

from trace_core.runtime import Runtime
from trace_core.sinks.consumer import SinkReport, sink_once
from trace_dagster.service_runs import ServiceSpec, StepReport, service_job, service_sensor

SINK_INTERVAL_SECONDS = 1.0

MESSAGES_PER_CALL = 10
MAX_CALLS_PER_TICK = 20
TICK_BUDGET_SECONDS = 20.0  # one step's budget


def sink_tick(
    rt: Runtime,
    *,
    max_calls: int = MAX_CALLS_PER_TICK,
    budget_seconds: float = TICK_BUDGET_SECONDS,
) -> list[SinkReport]:
    """Call ``sink_once`` until the buffer queue is idle, ``max_calls`` or the time budget."""
    reports: list[SinkReport] = []
    deadline = time.monotonic() + budget_seconds
    for _ in range(max_calls):
        report = sink_once(rt, max_messages=MESSAGES_PER_CALL)
        if report.idle:
            break
        reports.append(report)
        if time.monotonic() > deadline:
            break
    return reports


def sink_step(rt: Runtime, cursor: str | None, log: logging.Logger) -> StepReport:
    """Drain the buffer queue (bounded, see ``sink_tick``) and say what was written."""
    reports = sink_tick(rt)
    if not reports:
        return StepReport(False, "buffer queue is empty")
    for report in reports:
        for error in report.errors:
            log.warning(f"sink: message failed: {error}")
    return StepReport(
        True,
        f"{sum(r.received for r in reports)} message(s), {sum(r.acked for r in reports)} "
        f"written, {sum(r.rows_inserted for r in reports)} row(s) new, "
        f"{sum(r.rows_duplicate for r in reports)} duplicate",
    )


SINK = ServiceSpec(
    name="sink",
    step=sink_step,
    interval_seconds=SINK_INTERVAL_SECONDS,
    description="Writes buffered batches (buffer queue pointers) into Postgres data",
    exit_when_idle=True,
)
sink_job = service_job(SINK)
sink_sensor = service_sensor(SINK, sink_job)
