"""The ``trace_sink`` sensor starts a sink service run when the buffer queue has messages;
the run writes them; idle ticks skip."""

from __future__ import annotations

import uuid
from typing import Any

from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context

from tests.dagster.conftest import run_one_step
from trace_core import outbox
from trace_core.queue.base import BUFFER_QUEUE
from trace_core.runtime import Runtime
from trace_core.sinks.publish import publish_batch, stage_batch
from trace_core.tasks import claim, complete_success, create_task
from trace_dagster.definitions import build_definitions
from trace_dagster.driver import drive_until_idle
from trace_dagster.resources import TraceResource
from trace_dagster.sensors.services import sink_sensor
from trace_dagster.service_runs import sink_job


def _publish(rt: Runtime, keys: list[str]) -> None:
    rows: list[dict[str, Any]] = [
        {
            "dedupe_key": key,
            "alert_name": "sensor_test",
            "severity": "info",
            "chain_id": 1,
            "block_number": i,
            "block_hash": None,
            "tx_hash": None,
            "event_time": "2026-11-23T12:00:00Z",
            "payload": {},
        }
        for i, key in enumerate(keys)
    ]
    task_id = uuid.uuid4()
    with rt.state() as conn:
        with conn.transaction():
            create_task(conn, task_id=task_id, operator="alert_evaluate", payload={})
            lease = claim(conn, task_id, lease_seconds=30)
        ref = stage_batch(
            rt.store, destination="alert_events", task_id=task_id, attempt=lease.attempt, rows=rows
        )
        with conn.transaction():
            complete_success(conn, lease)
            publish_batch(conn, ref, task_id=task_id, attempt=lease.attempt)
        outbox.drain_all(conn, rt.queue)


def _keys(rt: Runtime) -> list[str]:
    with rt.data() as conn:
        return [r[0] for r in conn.execute("SELECT dedupe_key FROM data.alert_events ORDER BY 1")]


def _tick(instance: DagsterInstance) -> SensorResult | SkipReason:
    with build_sensor_context(instance=instance, resources={"trace": TraceResource()}) as ctx:
        result = sink_sensor(ctx)
    assert isinstance(result, SensorResult | SkipReason)
    return result


def test_sink_sensor_starts_a_sink_run_that_writes_the_buffer(
    trace_env: Runtime, dagster_instance: DagsterInstance
) -> None:
    assert isinstance(_tick(dagster_instance), SkipReason)  # nothing buffered: no run
    _publish(trace_env, ["a", "b"])
    _publish(trace_env, ["b", "c"])
    result = _tick(dagster_instance)
    assert isinstance(result, SensorResult)
    (request,) = result.run_requests
    assert request.tags["trace/kind"] == "service" and request.tags["trace/service"] == "sink"
    assert _keys(trace_env) == []  # the tick itself writes nothing

    run_one_step(sink_job, request, dagster_instance)
    assert _keys(trace_env) == ["a", "b", "c"]
    assert trace_env.queue.stats(BUFFER_QUEUE).depth == 0
    assert isinstance(_tick(dagster_instance), SkipReason)  # drained: no more runs


def test_driver_runs_the_sink_until_the_buffer_is_empty(
    trace_env: Runtime, dagster_instance: DagsterInstance
) -> None:
    defs = build_definitions(trace_env)
    assert defs.resolve_sensor_def("trace_sink").minimum_interval_seconds == 5
    _publish(trace_env, ["x", "y"])
    report = drive_until_idle(trace_env, defs, dagster_instance, timeout=60, poll_seconds=0.1)
    assert report.idle and report.dead_tasks == 0
    assert _keys(trace_env) == ["x", "y"]
