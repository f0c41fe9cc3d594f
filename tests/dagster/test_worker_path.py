"""The worker path through Dagster's harness: wake-ups -> sensor -> runs -> fenced completion."""

from __future__ import annotations

import time
import uuid

import pytest
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    RunRequest,
    RunsFilter,
    SensorResult,
    build_sensor_context,
)

from trace_core.queue.base import outbox_publishing
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_core.tasks import create_task
from trace_dagster.definitions import build_definitions
from trace_dagster.driver import drive_until_idle


def _create(rt: Runtime, operator: str, n: int, payload: dict | None = None) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    with rt.state() as conn, conn.transaction():
        for tid in ids:
            create_task(conn, task_id=tid, operator=operator, payload=payload or {}, max_attempts=2)
    return ids


def _statuses(rt: Runtime, ids: list[uuid.UUID]) -> dict[str, int]:
    with rt.state() as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM state.tasks WHERE task_id = ANY(%s) GROUP BY status",
            (ids,),
        ).fetchall()
    return {s: n for s, n in rows}


def test_definitions_load(trace_env: Runtime) -> None:
    defs = build_definitions(trace_env)
    assert defs.resolve_job_def("trace_worker") is not None
    # partition runs from the UI (the implicit asset job) execute in the run's own process
    assert defs.resolve_implicit_global_asset_job_def().executor_def.name == "in_process"
    assert {s.name for s in defs.sensors} == {
        "trace_dispatcher",
        "trace_worker_wakeups",
        "trace_sink",
        "trace_hot_follower",
        "trace_hot_compactor",
        "trace_alert_delivery",
        "trace_integrity",
        "trace_analytics",
        "trace_sensor_health",
    }
    # every asset names its org (issue 22: runs and assets carry the org)
    specs = defs.resolve_all_asset_specs()
    assert specs and {s.tags.get("trace/org") for s in specs} == {str(trace_env.settings.org_id)}


@pytest.mark.parametrize(("batch", "continue_seconds"), [(1, 300), (4, 0)])
def test_noop_tasks_complete_through_runs(
    trace_env: Runtime,
    dagster_instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    batch: int,
    continue_seconds: int,
) -> None:
    """The sensor requests a run per batch. Runs that continue (they may last the whole
    backfill) are executed by the driver as one run per tick, job and org, so no task waits,
    claimed by nobody, behind a running run; runs of one batch each stay one per request."""
    monkeypatch.setenv("TRACE_WORKER_BATCH_SIZE", str(batch))
    monkeypatch.setenv("TRACE_WORKER_CONTINUE_SECONDS", str(continue_seconds))
    rt = Runtime(load_settings())
    ids = _create(rt, "noop", 6)
    report = drive_until_idle(rt, build_definitions(rt), dagster_instance, timeout=120)
    assert report.idle and report.dead_tasks == 0
    assert _statuses(rt, ids) == {"succeeded": 6}
    assert report.requested == -(-6 // batch)  # what the sensor requested (the daemon's runs)
    runs = dagster_instance.get_runs(RunsFilter(job_name="trace_worker"))
    assert len(runs) == report.runs == (1 if continue_seconds else report.requested)
    assert all(r.status == DagsterRunStatus.SUCCESS for r in runs)
    assert all("trace/task_id" in r.tags and "trace/attempt" in r.tags for r in runs)
    assert {r.tags.get("trace/org") for r in runs} == {str(rt.settings.org_id)}
    assert all(r.tags.get("trace/in_process") == "1" for r in runs)  # not the run queue's
    with rt.state() as conn:
        claimed_last, first_done = conn.execute(
            "SELECT max(started_at), min(finished_at) FROM state.task_attempts"
            " WHERE task_id = ANY(%s)",
            (ids,),
        ).fetchone()
    if continue_seconds:  # the one run named and claimed every task before any ran
        (run,) = runs
        assert run.tags["trace/batch_size"] == "6"
        assert {f"trace/task.{t}" for t in ids} <= set(run.tags)
        assert claimed_last <= first_done
    else:  # one batch per run, one run after another
        assert claimed_last > first_done


def test_failing_task_shows_failed_runs_and_ends_dead(
    trace_env: Runtime, dagster_instance: DagsterInstance
) -> None:
    ids = _create(trace_env, "fail", 1, {"message": "boom"})
    report = drive_until_idle(
        trace_env, build_definitions(trace_env), dagster_instance, timeout=120
    )
    assert report.dead_tasks == 1 and report.failed_runs == 2  # max_attempts=2
    assert _statuses(trace_env, ids) == {"dead": 1}
    failed = dagster_instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
    assert len(failed) == 2
    # each task's line names its attempt, time and Trace's error; the run's log ends in Trace's
    # error line (after the step failure that Dagster follows with its own frames)
    (tid,) = ids
    for run in failed:
        attempt = run.tags["trace/attempt"]
        assert run.tags[f"trace/task.{tid}"] == attempt
        logs = dagster_instance.all_logs(run.run_id)
        lines = [e.user_message for e in logs if e.dagster_event is None]
        (task_line,) = [m for m in lines if m.startswith("fail: ")]
        assert f"attempt {attempt}, task {tid}: " in task_line and "boom" in task_line
        kinds = [e.dagster_event.event_type_value if e.dagster_event else "log" for e in logs]
        last = max(i for i, k in enumerate(kinds) if k == "STEP_FAILURE")
        after = [e.user_message for e in logs[last + 1 :] if e.dagster_event is None]
        assert after and after[-1].startswith(f"failed: task {tid} attempt {attempt} -> ")
        assert "boom" in after[-1]


def test_duplicate_wakeups_yield_one_run_and_one_execution(
    trace_env: Runtime, dagster_instance: DagsterInstance
) -> None:
    from trace_core import outbox

    (tid,) = _create(trace_env, "noop", 1)
    with trace_env.state() as conn:
        outbox.drain_all(conn, trace_env.queue)
    # a duplicate wake-up for the same generation (at-least-once delivery)
    with outbox_publishing():  # as a redelivery of the outbox's publish
        trace_env.queue.publish("task_wakeup", {"task_id": str(tid), "wakeup": 1})
    defs = build_definitions(trace_env)
    sensor = defs.resolve_sensor_def("trace_worker_wakeups")
    with build_sensor_context(
        instance=dagster_instance, definitions=defs, resources=dict(defs.resources or {})
    ) as ctx:
        result = sensor(ctx)
    assert len(result.run_requests) == 1
    job = defs.resolve_job_def("trace_worker")
    for _ in range(2):  # the same run requested twice (e.g. a retried launch) is harmless
        assert job.execute_in_process(
            run_config=result.run_requests[0].run_config, instance=dagster_instance
        ).success
    with trace_env.state() as conn:
        attempts = conn.execute(
            "SELECT count(*) FROM state.task_attempts WHERE task_id = %s", (tid,)
        ).fetchone()
    assert attempts == (1,)
    assert _statuses(trace_env, [tid]) == {"succeeded": 1}


def test_sensor_rewakes_the_tasks_of_a_requested_run_that_never_appeared(
    trace_env: Runtime, dagster_instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tick that requested a run died before Dagster stored it: one lease later (here
    1 s) the sensor finds no run with that key, re-wakes the batch and requests it again."""
    from trace_core import outbox

    monkeypatch.setenv("TRACE_LEASE_SECONDS", "1")
    rt = Runtime(load_settings())
    ids = _create(rt, "noop", 3)
    with rt.state() as conn:
        outbox.drain_all(conn, rt.queue)
    defs = build_definitions(rt)
    sensor = defs.resolve_sensor_def("trace_worker_wakeups")

    def tick() -> list[RunRequest]:
        with build_sensor_context(
            instance=dagster_instance, definitions=defs, resources=dict(defs.resources or {})
        ) as ctx:
            result = sensor(ctx)
        return list(result.run_requests) if isinstance(result, SensorResult) else []

    (lost,) = tick()  # requested, acked, and never launched
    assert tick() == []  # young: its run may still be on its way
    deadline = time.monotonic() + 30
    while not (again := tick()):
        assert time.monotonic() < deadline, "the lost run's tasks were never re-woken"
        time.sleep(0.2)
    (request,) = again
    assert request.run_key != lost.run_key
    task_ids = request.run_config["ops"]["execute_tasks"]["config"]["task_ids"]
    assert sorted(task_ids) == sorted(str(t) for t in ids)
    assert (
        defs.resolve_job_def("trace_worker")
        .execute_in_process(
            run_config=request.run_config,
            instance=dagster_instance,
            tags={**request.tags, "dagster/run_key": request.run_key or ""},
        )
        .success
    )
    assert _statuses(rt, ids) == {"succeeded": 3}
    assert tick() == []  # that run exists and claimed its batch: nothing more to recover


@pytest.mark.parametrize("where", ["run_coordinator", "concurrency"])
def test_sensor_leaves_wakeups_to_worker_runs_that_fill_the_queue(
    trace_env: Runtime, where: str
) -> None:
    """With the run queue's worker limit reached by active runs, which take woken tasks
    themselves, the sensor requests no run (one would wait queued, holding its tasks); once
    a slot frees, the wake-ups it left become a run. The limit is read where dagster.yaml
    sets it: the run coordinator's config, or the ``concurrency: runs:`` block (Lite's)."""
    from dagster import SkipReason, instance_for_test

    from trace_core import outbox
    from trace_core.queue.base import TASK_WAKEUP
    from trace_dagster.sensors.worker import worker_runs_full

    ids = _create(trace_env, "noop", 2)
    with trace_env.state() as conn:
        outbox.drain_all(conn, trace_env.queue)
    defs = build_definitions(trace_env)
    sensor = defs.resolve_sensor_def("trace_worker_wakeups")
    job = defs.resolve_job_def("trace_worker")
    limits = [{"key": "trace/kind", "value": "worker", "limit": 1}]
    coordinator = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}
    overrides: dict = {"run_coordinator": coordinator}
    if where == "run_coordinator":
        coordinator["config"] = {"tag_concurrency_limits": limits}
    else:
        overrides["concurrency"] = {"runs": {"tag_concurrency_limits": limits}}
    with instance_for_test(overrides=overrides) as instance:

        def tick() -> SensorResult | SkipReason:
            with build_sensor_context(
                instance=instance, definitions=defs, resources=dict(defs.resources or {})
            ) as ctx:
                return sensor(ctx)

        def started(**tags: str):  # noqa: ANN202 - a DagsterRun
            return instance.create_run_for_job(
                job,
                run_config={"ops": {"execute_tasks": {"config": {"task_ids": []}}}},
                tags={"trace/kind": "worker", **tags},
                status=DagsterRunStatus.STARTED,
            )

        # a run `trace-lite run` executed in its process and died with it: never the queue's
        started(**{"trace/in_process": "1"})
        assert worker_runs_full(trace_env, instance) is None
        active = started()
        skipped = tick()
        assert isinstance(skipped, SkipReason) and "1 worker runs active" in str(
            skipped.skip_message
        )
        assert trace_env.queue.stats(TASK_WAKEUP).depth == 2  # left for the active run
        instance.report_run_failed(active)
        result = tick()
        assert isinstance(result, SensorResult)
        (request,) = result.run_requests
        task_ids = request.run_config["ops"]["execute_tasks"]["config"]["task_ids"]
        assert sorted(task_ids) == sorted(str(t) for t in ids)


def test_driver_merges_a_ticks_worker_requests_per_job_and_org() -> None:
    """Worker requests of one job and org become the first one's run carrying every task;
    another org's, a service run's and a partition run's requests are left as they are."""
    from trace_dagster.driver import merge_worker_requests

    def worker(key: str, org: str, tasks: list[str]) -> RunRequest:
        return RunRequest(
            run_key=key,
            run_config={"ops": {"execute_tasks": {"config": {"task_ids": tasks}}}},
            tags={"trace/kind": "worker", "trace/org": org, "trace/task_id": tasks[0]}
            | {f"trace/task.{t}": "1" for t in tasks},
        )

    service = RunRequest(run_key="s", tags={"trace/kind": "service"})
    partition = RunRequest(run_key="p", tags={"trace/kind": "worker"}, partition_key="0-100")
    requests = [
        ("trace_worker", worker("a1", "A", ["t1", "t2"])),
        ("trace_sink", service),
        ("trace_worker", worker("b1", "B", ["t3"])),
        ("trace_worker", worker("a2", "A", ["t4"])),
        ("trace_worker", partition),
    ]
    merged = merge_worker_requests(requests)
    assert [(job, req.run_key) for job, req in merged] == [
        ("trace_worker", "a1"),
        ("trace_sink", "s"),
        ("trace_worker", "b1"),
        ("trace_worker", "p"),
    ]
    a = merged[0][1]
    assert a.run_config["ops"]["execute_tasks"]["config"]["task_ids"] == ["t1", "t2", "t4"]
    assert a.tags["trace/task_id"] == "t1" and a.tags["trace/batch_size"] == "3"
    assert {"trace/task.t1", "trace/task.t2", "trace/task.t4"} <= set(a.tags)
    assert "trace/task.t3" not in a.tags
    assert merged[1][1] is service and merged[2][1] is requests[2][1]


def test_a_run_logs_its_succeeded_ranges_in_batches_and_failures_at_once() -> None:
    """``LineBatcher``: success lines wait for the interval (or the run's end) and go out as
    one event; a failure's line goes out at once, after the successes before it."""
    from trace_dagster.jobs import LineBatcher

    logged: list[str] = []
    lines = LineBatcher(logged.append, every=3600)
    lines.add("range 0-250: succeeded")
    lines.add("range 250-500: succeeded")
    assert logged == []
    lines.flush()  # a failure's turn (or the run's end)
    lines.flush()
    assert logged == ["range 0-250: succeeded\nrange 250-500: succeeded"]
    every_time = LineBatcher(logged.append, every=0)
    every_time.add("range 500-750: succeeded")
    assert logged[-1] == "range 500-750: succeeded"


def test_a_continuing_run_adds_its_later_tasks_tags_in_batches(
    dagster_instance: DagsterInstance,
) -> None:
    """``RunTagger``: the tags of tasks a run took on after its first batch reach the run at
    most once per interval, and all of them by the end of the run (``flush``); tags the run
    already has are never written again."""
    from dagster._core.test_utils import create_run_for_test

    from trace_dagster.jobs import RunTagger

    run = create_run_for_test(dagster_instance, job_name="trace_worker", tags={"trace/task.a": "1"})

    def tags() -> dict[str, str]:
        found = dagster_instance.get_run_by_id(run.run_id)
        assert found is not None
        return dict(found.tags)

    tagger = RunTagger(dagster_instance, run.run_id, run.tags, every=3600)
    tagger.add({"trace/task.a": "1"})  # the run's own: nothing to write
    tagger.add({"trace/task.b": "1", "trace/range.blocks.000-250": "demo"})
    tagger.add({"trace/task.c": "2"})
    assert "trace/task.b" not in tags()  # within the interval: not written yet
    assert tagger.have["trace/task.c"] == "2"
    tagger.flush()
    assert {k: tags()[k] for k in tagger.have} == {
        "trace/task.a": "1",
        "trace/task.b": "1",
        "trace/range.blocks.000-250": "demo",
        "trace/task.c": "2",
    }
    every_time = RunTagger(dagster_instance, run.run_id, tags(), every=0)
    every_time.add({"trace/task.d": "1"})
    assert tags()["trace/task.d"] == "1"
