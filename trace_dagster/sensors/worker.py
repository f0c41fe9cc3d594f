"""``trace_worker_wakeups``: task wake-ups become ``trace_worker`` runs (``plan_worker_runs``),
after re-waking the tasks of requested runs that will never claim them."""

# No `from __future__ import annotations` here: Dagster resolves sensor annotations at runtime.
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from trace_core.engine.intake import (
    GONE,
    WAITING,
    LaunchState,
    plan_worker_runs,
    recover_stranded,
)
from trace_core.runtime import Runtime
from trace_dagster.console import with_console
from trace_dagster.jobs import trace_worker
from trace_dagster.resources import TraceResource
from trace_dagster.sensors.common import instance_of
from trace_dagster.service_runs import KIND_TAG

MAX_RUNS_PER_TICK = 10
WORKER_OP = "execute_tasks"  # the trace_worker op whose config names a run's tasks
# On the worker runs ``trace-lite run`` executes in its own process (trace_dagster.driver):
# they never pass the run queue, and one killed with its process stays "started" forever.
IN_PROCESS_TAG = "trace/in_process"
# The run key Dagster stamps on sensor runs (recovery looks runs up by it).
RUN_KEY_TAG = "dagster/run_key"
FINISHED_STATUSES = frozenset(
    {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
)
# A requested run must show up in Dagster's storage within this long (the daemon submits it
# right after the tick) before its tasks count as stranded.
RECOVERY_GRACE_SECONDS = 15.0


def worker_requests(rt: Runtime, max_runs: int = MAX_RUNS_PER_TICK) -> list[RunRequest]:
    """One ``trace_worker`` run request per planned batch (wake-ups are acked once recorded)."""
    return [
        RunRequest(
            run_key=run.run_key,
            run_config=with_console({"ops": {WORKER_OP: {"config": {"task_ids": run.task_ids}}}}),
            tags={**run.tags, KIND_TAG: "worker"},
        )
        for run in plan_worker_runs(rt, max_runs)
    ]


ACTIVE_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


def worker_run_limit(instance: DagsterInstance) -> int | None:
    """How many ``trace_worker`` runs the instance's run queue lets run at once (its
    ``tag_concurrency_limits`` entry for ``trace/kind=worker``); None without one. Read from
    the instance's concurrency config, which holds dagster.yaml's ``concurrency: runs:`` block
    (Lite's) as well as the run coordinator's own config: the coordinator alone knows only
    the latter."""
    get_concurrency = getattr(instance, "get_concurrency_config", None)
    if get_concurrency is not None:
        config = get_concurrency().run_queue_config
    else:
        get_config = getattr(instance.run_coordinator, "get_run_queue_config", None)
        config = get_config() if get_config is not None else None
    for entry in (config.tag_concurrency_limits if config is not None else None) or []:
        if entry.get("key") == KIND_TAG and entry.get("value") == "worker":
            return int(entry["limit"])
    return None


def worker_runs_full(rt: Runtime, instance: DagsterInstance | None) -> int | None:
    """The number of active worker runs when they fill the queue's worker limit and take woken
    tasks themselves (``TRACE_WORKER_CONTINUE_SECONDS`` > 0), else None. A run requested then
    would wait in the queue holding its tasks, which the running runs would have taken. Runs
    executed in process (``IN_PROCESS_TAG``) do not count: the driver runs one at a time and
    never ticks while one runs, so one active then is a dead process's."""
    if instance is None or rt.settings.worker_continue_seconds <= 0:
        return None
    limit = worker_run_limit(instance)
    if limit is None:
        return None
    active = instance.get_runs_count(
        RunsFilter(tags={KIND_TAG: "worker"}, statuses=ACTIVE_STATUSES)
    ) - instance.get_runs_count(
        RunsFilter(tags={KIND_TAG: "worker", IN_PROCESS_TAG: "1"}, statuses=ACTIVE_STATUSES)
    )
    return active if active >= limit else None


def launch_state(instance: DagsterInstance, run_key: str) -> LaunchState:
    """What Dagster holds for ``run_key``: gone (none, or finished), waiting for a slot (not
    started, queued, canceling), or launched at its launch time (starting) or start time."""
    records = instance.get_run_records(filters=RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1)
    if not records or records[0].dagster_run.status in FINISHED_STATUSES:
        return GONE
    record = records[0]
    status = record.dagster_run.status
    if status == DagsterRunStatus.STARTED:
        started = record.start_time or instance.get_run_stats(record.dagster_run.run_id).start_time
        return LaunchState(launched_at=started or record.update_timestamp.timestamp())
    if status == DagsterRunStatus.STARTING:
        launched = instance.get_run_stats(record.dagster_run.run_id).launch_time
        return LaunchState(launched_at=launched or record.update_timestamp.timestamp())
    return WAITING


@sensor(
    name="trace_worker_wakeups",
    job=trace_worker,
    minimum_interval_seconds=5,
    default_status=DefaultSensorStatus.RUNNING,
    description="Receives task wake-ups from the queue and launches trace_worker runs",
)
def worker_sensor(
    context: SensorEvaluationContext, trace: TraceResource
) -> SensorResult | SkipReason:
    rt = trace.get_client()
    instance = instance_of(context)
    rewoken = recover_stranded(
        rt,
        lambda key: WAITING if instance is None else launch_state(instance, key),
        RECOVERY_GRACE_SECONDS,
    )
    if rewoken:
        context.log.warning(f"re-woke {rewoken} task(s) of worker runs that never claimed them")
    if (active := worker_runs_full(rt, instance)) is not None:
        return SkipReason(f"{active} worker runs active: they take the woken tasks themselves")
    requests = worker_requests(rt)
    if not requests:
        return SkipReason("no wake-ups")
    return SensorResult(run_requests=requests)
