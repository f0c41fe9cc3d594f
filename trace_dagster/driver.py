"""Drive the Dagster definitions in the foreground until the work is done.

``trace-lite run --until-idle`` and the tests use this: it evaluates the same sensors the
daemon would (but the scheduled maintenance ones, ``NOT_DRIVEN``), applies their dynamic-partition requests, and executes the requested runs in
process against a real Dagster instance, so runs and materializations land in Dagster's
storage exactly as they do under ``dagster dev``. While runs execute, a thread keeps the
sensors' recovery going (``trace_dagster.recovery``).

The daemon launches a tick's runs side by side; this driver executes them one after another.
When worker runs continue (``TRACE_WORKER_CONTINUE_SECONDS`` > 0) a run may last the whole
backfill, so a tick's worker requests of one job and org are executed as one run
(``merge_worker_requests``): a second run's tasks would otherwise wait, claimed by nobody and
counting against their streams' ``max_inflight``, until the first run ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

from dagster import (
    DagsterInstance,
    Definitions,
    DeleteDynamicPartitionsRequest,
    RunRequest,
    SensorResult,
    SkipReason,
    build_sensor_context,
)

from trace_core.engine.idle import OutstandingWork, outstanding_work
from trace_core.engine.intake import ORG_TAG
from trace_core.errors import DatabaseUnreachable, TraceError
from trace_core.runtime import Runtime
from trace_dagster.recovery import recovering
from trace_dagster.sensors.worker import IN_PROCESS_TAG, RUN_KEY_TAG, WORKER_OP
from trace_dagster.service_runs import KIND_TAG, one_step

log = logging.getLogger(__name__)

DISPATCHER_SENSOR = "trace_dispatcher"
# Not ticked by the driver: scheduled maintenance (integrity passes) is no work owed, and the
# sensor-health watchdog reads the daemon's tick history, which a driven run has none of.
NOT_DRIVEN = frozenset({"trace_integrity", "trace_sensor_health"})


@dataclass
class DriveReport:
    ticks: int = 0
    requested: int = 0  # run requests the sensors made (a tick's worker requests may merge)
    runs: int = 0
    failed_runs: int = 0
    planned: int = 0
    idle: bool = False
    timed_out: bool = False
    dead_tasks: int = 0
    failed_ticks: int = 0
    run_ids: list[str] = field(default_factory=list)


def _evaluate(
    defs: Definitions, instance: DagsterInstance, name: str, cursors: dict[str, str | None]
) -> SensorResult | SkipReason | None:
    sensor_def = defs.resolve_sensor_def(name)
    with build_sensor_context(
        instance=instance,
        definitions=defs,
        sensor_name=name,
        cursor=cursors.get(name),
        resources=dict(defs.resources or {}),
    ) as ctx:
        result = sensor_def(ctx)
    if isinstance(result, SensorResult) and result.cursor is not None:
        cursors[name] = result.cursor
    if isinstance(result, SensorResult | SkipReason):
        return result
    return None


def _apply_partitions(instance: DagsterInstance, result: SensorResult | SkipReason | None) -> int:
    if not isinstance(result, SensorResult):
        return 0
    added = 0
    for req in result.dynamic_partitions_requests or []:
        keys = list(req.partition_keys or [])
        name = getattr(req, "partitions_def_name", None)
        if not name or not keys:
            continue
        if isinstance(req, DeleteDynamicPartitionsRequest):  # e.g. pre-epoch range keys
            for key in keys:
                instance.delete_dynamic_partition(name, key)
            continue
        instance.add_dynamic_partitions(name, keys)
        added += len(keys)
    for event in result.asset_events or []:  # e.g. the integrity sensor's check evaluations
        instance.report_runless_asset_event(event)
    return added


def _job_name(defs: Definitions, sensor_name: str) -> str:
    sensor_def = defs.resolve_sensor_def(sensor_name)
    if not sensor_def.has_jobs or len(sensor_def.jobs) != 1:
        return ""  # a multi-job sensor names the job in each request
    return sensor_def.job_name or ""


def drive_until_idle(
    rt: Runtime,
    defs: Definitions,
    instance: DagsterInstance,
    *,
    timeout: float = 600.0,
    poll_seconds: float = 0.5,
    on_tick: Callable[[DriveReport], None] | None = None,
    state_gone: Callable[[], str | None] | None = None,
    max_state_outage_seconds: float = 60.0,
) -> DriveReport:
    """Tick every sensor (the dispatcher first) and execute the runs they request, until
    nothing is queued or running.

    Like the daemon, a sensor that raises (Postgres restarting, the queue down) fails only its
    tick (``failed_ticks``) and is evaluated again on the next; a run that fails is counted in
    ``failed_runs`` (Trace retries its tasks). A state database that stays unreachable for
    ``max_state_outage_seconds``, or that ``state_gone`` says will not come back (it returns
    why, e.g. the embedded server's process is gone), ends the drive at once: raises
    ``DatabaseUnreachable`` (a rerun resumes where this one stopped).
    """
    report = DriveReport()
    outage_since: float | None = None

    def stop_if_gone(exc: BaseException) -> None:
        if state_gone is not None and _unreachable(exc) and (why := state_gone()) is not None:
            raise DatabaseUnreachable(why) from exc

    names = [s.name for s in defs.get_repository_def().sensor_defs if s.name not in NOT_DRIVEN]
    names.sort(key=lambda n: (n != DISPATCHER_SENSOR, n))
    deadline = time.monotonic() + timeout
    cursors: dict[str, str | None] = {}
    while True:
        report.ticks += 1
        requests: list[tuple[str, RunRequest]] = []
        for name in names:
            try:
                result = _evaluate(defs, instance, name, cursors)
            except Exception as exc:  # noqa: BLE001 - as the daemon does: a failed tick, retried
                stop_if_gone(exc)
                report.failed_ticks += 1
                log.warning("sensor %s failed this tick: %s: %s", name, type(exc).__name__, exc)
                continue
            report.planned += _apply_partitions(instance, result)
            if isinstance(result, SensorResult):
                job_name = _job_name(defs, name)
                requests += [(req.job_name or job_name, req) for req in result.run_requests or []]
        report.requested += len(requests)
        pending = {req.run_key for _, req in requests if req.run_key}
        if rt.settings.worker_continue_seconds > 0:
            requests = merge_worker_requests(requests)
        with recovering(rt, instance, pending) if requests else nullcontext():
            for job_name, req in requests:
                tags = dict(req.tags)
                if req.run_key:
                    tags[RUN_KEY_TAG] = req.run_key  # as the daemon stamps it (recovery reads it)
                if tags.get(KIND_TAG) == "worker":
                    tags[IN_PROCESS_TAG] = "1"  # not a run of the queue's (worker_runs_full)
                run = defs.resolve_job_def(job_name).execute_in_process(
                    run_config=(
                        one_step(req.run_config)
                        if tags.get(KIND_TAG) == "service"
                        else req.run_config
                    ),
                    instance=instance,
                    tags=tags,
                    partition_key=req.partition_key,
                    raise_on_error=False,
                )
                report.runs += 1
                report.run_ids.append(run.run_id)
                if not run.success:
                    report.failed_runs += 1
        if on_tick:
            on_tick(report)
        try:
            work = outstanding_work(rt)
            outage_since = None
        except TraceError as exc:  # state unreachable (a restart): not idle
            stop_if_gone(exc)
            now = time.monotonic()
            outage_since = now if outage_since is None else outage_since
            if _unreachable(exc) and now - outage_since > max_state_outage_seconds:
                raise DatabaseUnreachable(
                    f"state database unreachable for {now - outage_since:.0f} s; stopping: {exc}"
                ) from exc
            log.warning("state unreachable: %s: %s", type(exc).__name__, exc)
            work = OutstandingWork(active=1, pending=0, dead=report.dead_tasks)
        report.dead_tasks = work.dead
        if not requests and work.idle:
            report.idle = True
            return report
        if time.monotonic() > deadline:
            report.timed_out = True
            return report
        if not requests:
            time.sleep(poll_seconds)


def merge_worker_requests(requests: list[tuple[str, RunRequest]]) -> list[tuple[str, RunRequest]]:
    """A tick's worker run requests of one job and org as one request, in the first one's
    place; other requests unchanged and in order.

    The merged run claims every task of the tick at once and keeps running the one furthest
    behind (``worker_run.furthest_behind``), as the runs would side by side under the daemon.
    It carries the first request's run key; the others are in the driver's ``pending`` keys
    while it executes, and their tasks are claimed by it (a driver killed before that claim
    leaves them to ``recover_stranded``: no run with their key, so gone)."""
    out: list[tuple[str, RunRequest]] = []
    slot: dict[tuple[str, str], int] = {}
    for job_name, req in requests:
        if req.tags.get(KIND_TAG) != "worker" or req.partition_key is not None:
            out.append((job_name, req))
            continue
        key = (job_name, req.tags.get(ORG_TAG, ""))
        if key in slot:
            out[slot[key]] = (job_name, _merged(out[slot[key]][1], req))
        else:
            slot[key] = len(out)
            out.append((job_name, req))
    return out


def _task_ids(req: RunRequest) -> list[str]:
    return list(req.run_config["ops"][WORKER_OP]["config"]["task_ids"])


def _merged(first: RunRequest, other: RunRequest) -> RunRequest:
    """``first`` carrying ``other``'s tasks too: its run key and labels (trace/task_id, ...),
    every task's and range's tag of both, and the batch size of both."""
    task_ids = _task_ids(first) + _task_ids(other)
    ops = {**first.run_config["ops"], WORKER_OP: {"config": {"task_ids": task_ids}}}
    return RunRequest(
        run_key=first.run_key,
        run_config={**first.run_config, "ops": ops},
        tags={**other.tags, **first.tags, "trace/batch_size": str(len(task_ids))},
    )


def _unreachable(exc: BaseException | None) -> bool:
    """Whether ``exc`` or one of its causes is a ``DatabaseUnreachable`` (Dagster wraps what a
    sensor raises)."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, DatabaseUnreachable):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
