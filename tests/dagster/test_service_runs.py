"""Service runs: the sensors keep one run per service serving, under a lease in state.

The steps themselves are tested where they live (test_hot_sensors, test_sink_sensor,
test_alert_sensor); here: the keeper's decisions, the lease, the loop's lifetime, and the hot
follower going from sensor to a real run that follows a real chain.
"""

from __future__ import annotations

import logging
import time

import pytest
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
    SensorResult,
    SkipReason,
    build_sensor_context,
)

from tests.dagster.conftest import run_one_step
from tests.dagster.test_hot_sensors import CHAIN_ID, apply, hot_cursor, job_yaml
from tests.dagster.test_sink_sensor import _publish
from trace_core.engine import services
from trace_core.engine.service_steps import FOLLOWER, SINK
from trace_core.engine.services import ServiceSpec, StepReport, serve
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_dagster.resources import TraceResource
from trace_dagster.sensors.services import hot_follower_sensor, keeper_result
from trace_dagster.service_runs import hot_follower_job, job_name
from trace_lite.devtools.devchain import DevChain

LOG = logging.getLogger("test_service_runs")


def _keep(rt: Runtime, spec: ServiceSpec, instance: DagsterInstance) -> SensorResult | SkipReason:
    return keeper_result(rt, spec, instance)


def test_keeper_requests_a_run_only_with_work_and_no_live_holder(
    trace_env: Runtime, dagster_instance: DagsterInstance
) -> None:
    assert "nothing to do" in str(_keep(trace_env, SINK, dagster_instance))
    _publish(trace_env, ["k"])
    first = _keep(trace_env, SINK, dagster_instance)
    assert isinstance(first, SensorResult) and len(first.run_requests) == 1
    ops = first.run_requests[0].run_config["ops"]
    assert ops == {"sink_loop": {"config": {"max_seconds": 600.0}}}  # TRACE_SERVICE_RUN_SECONDS

    assert services.acquire(trace_env, "sink", "run-elsewhere")
    held = _keep(trace_env, SINK, dagster_instance)
    assert isinstance(held, SkipReason) and "run-elsewhere is serving" in str(held.skip_message)
    # a run started meanwhile finds the lease held, takes no step and writes nothing
    assert serve(trace_env, SINK, "second-run", 0, LOG, lambda e: None) == 0
    assert services.holder(trace_env, "sink") == "run-elsewhere"
    services.release(trace_env, "sink", "run-elsewhere")
    again = _keep(trace_env, SINK, dagster_instance)
    assert isinstance(again, SensorResult)


def test_a_dead_holders_lease_lapses_and_the_keeper_starts_a_new_run(
    trace_env: Runtime, dagster_instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACE_LEASE_SECONDS", "2")
    rt = Runtime(load_settings())
    _publish(rt, ["k"])
    assert services.acquire(rt, "sink", "killed-run")  # it never renews nor releases
    assert isinstance(_keep(rt, SINK, dagster_instance), SkipReason)
    deadline = time.monotonic() + 10
    while services.holder(rt, "sink") is not None:
        assert time.monotonic() < deadline, "the lease never lapsed"
        time.sleep(0.2)
    assert isinstance(_keep(rt, SINK, dagster_instance), SensorResult)
    assert services.acquire(rt, "sink", "new-run")  # a lapsed lease is free to take


def test_serve_steps_until_its_lifetime_then_releases(trace_env: Runtime) -> None:
    calls: list[str | None] = []

    def step(rt: Runtime, cursor: str | None, log: logging.Logger) -> StepReport:
        calls.append(cursor)
        return StepReport(True, "worked", cursor=str(len(calls)))

    spec = ServiceSpec(name="sink", step=step, interval_seconds=0.05, description="test")
    steps = serve(trace_env, spec, "run-a", 0.5, LOG, lambda e: None)
    assert steps == len(calls) >= 3
    assert calls[:3] == [None, "1", "2"]  # each step gets the previous step's cursor
    assert services.holder(trace_env, "sink") is None  # released at the end


def test_idle_service_runs_end_on_their_own(
    trace_env: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACE_SERVICE_IDLE_EXIT_SECONDS", "1")
    rt = Runtime(load_settings())
    spec = ServiceSpec(
        name="alert_delivery",
        step=lambda rt, cursor, log: StepReport(False, "idle"),
        interval_seconds=0.1,
        description="test",
        exit_when_idle=True,
    )
    started = time.monotonic()
    steps = serve(rt, spec, "run-b", 600, LOG, lambda e: None)
    assert steps >= 2 and time.monotonic() - started < 60  # well before its 600 s lifetime


def test_follower_sensor_launches_a_run_that_follows_the_chain(
    trace_env: Runtime, dagster_instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    with DevChain.start(blocks=30, seed=3, chain_id=CHAIN_ID) as chain:
        monkeypatch.setenv("TRACE_RPC_POOL_TIP_URL", chain.rpc_url)
        apply(trace_env, job_yaml("tip", "tip", to_block=25, chunk=25, hot="{rpc_pool: tip}"))
        with build_sensor_context(
            instance=dagster_instance, resources={"trace": TraceResource()}
        ) as ctx:
            result = hot_follower_sensor(ctx)
        assert isinstance(result, SensorResult)
        (request,) = result.run_requests
        run_one_step(hot_follower_job, request, dagster_instance)
        assert hot_cursor(trace_env) is not None
        (record,) = dagster_instance.get_runs(RunsFilter(job_name=job_name(FOLLOWER)))
        assert record.status == DagsterRunStatus.SUCCESS
        assert record.tags["trace/kind"] == "service"
        assert services.holder(trace_env, "hot_follower") is None  # released at the end
