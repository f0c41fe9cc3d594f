"""Reviving from the Dagster UI: a re-executed ``trace_worker`` run revives its dead tasks."""

# No `from __future__ import annotations` here: Dagster resolves op annotations at runtime.
import uuid
from collections.abc import Iterable

from dagster import DagsterEventType, DagsterInstance, DagsterRun, MetadataValue, OpExecutionContext

from trace_core.engine.revive import revive_for_rerun
from trace_core.runtime import Runtime

# Dagster's automatic run retries (run_retries in dagster.yaml) carry this tag; a re-execution a
# person asks for (UI, `dagster job reexecute`, execute_job) does not.
AUTO_RETRY_TAG = "dagster/retry_number"
# A failed run's failure metadata lists every task it executed, its later waves included (the
# run config holds only the first batch), so a re-execution revives them all.
TOUCHED_TASKS = "trace/touched_task_ids"


def touched_metadata(task_ids: Iterable[uuid.UUID]) -> dict[str, MetadataValue]:
    """Failure metadata recording the tasks a run executed."""
    return {TOUCHED_TASKS: MetadataValue.json(list(dict.fromkeys(str(t) for t in task_ids)))}


def tasks_touched_by(instance: DagsterInstance, run_id: str) -> list[str]:
    """The task ids a failed run recorded in its failure metadata (empty if none)."""
    out: list[str] = []
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
        data = entry.dagster_event.step_failure_data if entry.dagster_event else None
        failure = data.user_failure_data if data else None
        value = failure.metadata.get(TOUCHED_TASKS) if failure else None
        if value is not None and isinstance(value.value, list):
            out += [str(t) for t in value.value]
    return out


def is_manual_reexecution(run: DagsterRun) -> bool:
    """A re-execution (``parent_run_id`` set) that is not an automatic run retry: reviving is a
    person's decision, so a first run or an automatic retry never revives a dead task."""
    return run.parent_run_id is not None and AUTO_RETRY_TAG not in run.tags


def revive_for_reexecution(
    context: OpExecutionContext, rt: Runtime, task_ids: list[str]
) -> list[str]:
    """Before a re-executed run (``parent_run_id`` set) executes: revive the dead tasks of its
    batch and of every wave the failed parent run touched (fresh budget, range rescheduled),
    make backed-off retries due now, and return the task ids the run executes (its batch, then
    the parent's later waves). Their outbox wake-ups are delayed by one lease, a backstop in
    case this run dies before claiming them (``engine.revive.revive_for_rerun``)."""
    run = context.dagster_run
    assert run.parent_run_id is not None
    task_ids = list(
        dict.fromkeys([*task_ids, *tasks_touched_by(context.instance, run.parent_run_id)])
    )
    prep = revive_for_rerun(
        rt, task_ids, detail=f"dagster run {run.run_id} (re-executes {run.parent_run_id})"
    )
    for o in prep.revived:
        context.log.info(
            f"revived task {o.task_id} ({o.label}) after {o.attempts} attempt(s); "
            f"last error: {o.last_error}"
        )
    if prep.expedited:
        context.log.info(f"made {len(prep.expedited)} backed-off task(s) due now")
    return task_ids
