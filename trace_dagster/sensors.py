"""Sensors: the dispatcher (plan, reap, publish) and the worker (wake-ups -> runs)."""

# No `from __future__ import annotations` here: Dagster resolves op/sensor annotations at runtime.
import hashlib
import time
import uuid

from dagster import (
    AddDynamicPartitionsRequest,
    DagsterInstance,
    DagsterInvariantViolationError,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from trace_core.dispatcher import all_partitions, dispatch_tick
from trace_core.runtime import Runtime
from trace_core.worker import (
    TaskInfo,
    Wakeup,
    ack_wakeups,
    receive_wakeups,
    record_runs,
    recover_stranded,
    task_infos,
)
from trace_dagster.jobs import trace_worker
from trace_dagster.partitions import partitions_def_name
from trace_dagster.resources import TraceResource
from trace_dagster.service_runs import KIND_TAG

MAX_RUNS_PER_TICK = 10
# The run key Dagster stamps on sensor runs (recovery looks runs up by it).
RUN_KEY_TAG = "dagster/run_key"
FINISHED_STATUSES = frozenset(
    {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
)
# A requested run must show up in Dagster's storage within this long (the daemon submits it
# right after the tick) before its tasks count as stranded.
RECOVERY_GRACE_SECONDS = 15.0


def _instance(context: SensorEvaluationContext) -> DagsterInstance | None:
    try:
        return context.instance
    except DagsterInvariantViolationError:  # a context built in a test without an instance
        return None


PARTITIONS_SYNCED = "partitions-synced"
# How often the dispatcher re-checks that every planned range is a partition in the instance.
PARTITIONS_RESYNC_SECONDS = 300.0


def _synced_at(cursor: str | None) -> float | None:
    """Epoch seconds of the last full partition sync recorded in the cursor, if any."""
    prefix, sep, stamp = (cursor or "").partition(":")
    if prefix != PARTITIONS_SYNCED or not sep:
        return None
    try:
        return float(stamp)
    except ValueError:
        return None


def dispatcher_result(
    rt: Runtime,
    cursor: str | None,
    instance: DagsterInstance | None = None,
    now: float | None = None,
) -> SensorResult | SkipReason:
    """One dispatcher tick as a sensor result: partitions for the ranges it planned.

    On the first tick and then every ``PARTITIONS_RESYNC_SECONDS`` it also requests every
    planned range missing from ``instance`` (all of them without an instance). A tick whose
    result never reached the daemon (the process died, or the sensor raised after planning,
    e.g. while the queue was down) leaves the cursor as it was, so the daemon's persisted
    cursor alone cannot heal it; the periodic sync does.
    """
    now = time.time() if now is None else now
    report = dispatch_tick(rt)
    synced_at = _synced_at(cursor)
    resync = synced_at is None or now - synced_at >= PARTITIONS_RESYNC_SECONDS
    partitions = all_partitions(rt) if resync else list(report.planned)
    by_def: dict[str, list[str]] = {}
    for p in partitions:
        by_def.setdefault(partitions_def_name(p.job_name, p.dataset_key), []).append(
            p.partition_key
        )
    if resync and instance is not None:
        for name in list(by_def):
            known = set(instance.get_dynamic_partitions(name))
            by_def[name] = [k for k in by_def[name] if k not in known]
        by_def = {name: keys for name, keys in by_def.items() if keys}
    next_cursor = f"{PARTITIONS_SYNCED}:{now:.0f}" if resync else cursor
    if not report.did_work and not by_def:
        if next_cursor == cursor:
            return SkipReason("nothing to plan, reap or publish")
        return SensorResult(skip_reason="partitions in sync; nothing to plan", cursor=next_cursor)
    return SensorResult(
        dynamic_partitions_requests=[
            AddDynamicPartitionsRequest(partitions_def_name=name, partition_keys=keys)
            for name, keys in by_def.items()
        ],
        cursor=next_cursor,
    )


def run_tags(infos: list[TaskInfo]) -> dict[str, str]:
    """Run tags naming job, stream, range, task and attempt (first task's, plus a count)."""
    first = infos[0]
    p = first.payload
    tags = {
        "trace/operator": first.operator,
        "trace/task_id": str(first.task_id),
        "trace/attempt": str(first.attempt + 1),
        "trace/batch_size": str(len(infos)),
    }
    if "job_name" in p:
        tags["trace/job"] = str(p["job_name"])
    if "dataset_key" in p:
        tags["trace/stream"] = str(p["dataset_key"])
    if "range_start" in p and "range_end" in p:
        tags["trace/range"] = f"{p['range_start']}-{p['range_end']}"
    return tags


def worker_requests(rt: Runtime, max_runs: int = MAX_RUNS_PER_TICK) -> list[RunRequest]:
    """Turn wake-ups into run requests, ``worker_batch_size`` tasks per run, then ack them.

    Each requested run key is recorded with its tasks before the ack, so a run that never
    claims them is noticed (``recover_stranded``) instead of waiting for the re-wake.
    """
    batch = rt.settings.worker_batch_size
    wakeups: list[Wakeup] = receive_wakeups(rt, batch * max_runs)
    infos = task_infos(rt, list({w.task_id for w in wakeups}))
    runnable: dict[str, tuple[TaskInfo, int]] = {}
    for w in wakeups:
        info = infos.get(w.task_id)
        if info is None or info.status in ("succeeded", "dead"):
            continue
        runnable[str(w.task_id)] = (
            info,
            max(w.generation, runnable.get(str(w.task_id), (info, 0))[1]),
        )
    items = sorted(runnable.items())
    requests: list[RunRequest] = []
    records: list[tuple[str, list[uuid.UUID]]] = []
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        key_src = ",".join(f"{tid}:{gen}" for tid, (_, gen) in chunk)
        run_key = hashlib.sha256(key_src.encode()).hexdigest()[:32]
        requests.append(
            RunRequest(
                run_key=run_key,
                run_config={
                    "ops": {"execute_tasks": {"config": {"task_ids": [tid for tid, _ in chunk]}}}
                },
                tags={**run_tags([info for _, (info, _) in chunk]), KIND_TAG: "worker"},
            )
        )
        records.append((run_key, [info.task_id for _, (info, _) in chunk]))
    record_runs(rt, records)
    ack_wakeups(rt, wakeups)
    return requests


def _run_alive(instance: DagsterInstance, run_key: str) -> bool:
    """Whether Dagster holds a run for ``run_key`` that may still claim its tasks."""
    runs = instance.get_runs(filters=RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1)
    return bool(runs) and runs[0].status not in FINISHED_STATUSES


@sensor(
    name="trace_dispatcher",
    minimum_interval_seconds=5,
    default_status=DefaultSensorStatus.RUNNING,
    description="Plans chain_sync ranges, reaps expired leases and publishes the outbox",
)
def dispatcher_sensor(
    context: SensorEvaluationContext, trace: TraceResource
) -> SensorResult | SkipReason:
    return dispatcher_result(trace.get_client(), context.cursor, _instance(context))


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
    instance = _instance(context)
    rewoken = recover_stranded(
        rt, lambda key: instance is None or _run_alive(instance, key), RECOVERY_GRACE_SECONDS
    )
    if rewoken:
        context.log.warning(f"re-woke {rewoken} task(s) of worker runs that never claimed them")
    requests = worker_requests(rt)
    if not requests:
        return SkipReason("no wake-ups")
    return SensorResult(run_requests=requests)
