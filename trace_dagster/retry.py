"""Reviving from the Dagster UI: a re-executed ``trace_worker`` run revives its dead tasks."""

# No `from __future__ import annotations` here: Dagster resolves op annotations at runtime.
from dagster import DagsterRun, OpExecutionContext

from trace_core.engine.revive import revive_for_rerun
from trace_core.runtime import Runtime

# Dagster's automatic run retries (run_retries in dagster.yaml) carry this tag; a re-execution a
# person asks for (UI, `dagster job reexecute`, execute_job) does not.
AUTO_RETRY_TAG = "dagster/retry_number"


def is_manual_reexecution(run: DagsterRun) -> bool:
    """A re-execution (``parent_run_id`` set) that is not an automatic run retry: reviving is a
    person's decision, so a first run or an automatic retry never revives a dead task."""
    return run.parent_run_id is not None and AUTO_RETRY_TAG not in run.tags


def revive_for_reexecution(context: OpExecutionContext, rt: Runtime, task_ids: list[str]) -> None:
    """Before a re-executed run (``parent_run_id`` set) executes its batch: revive its dead
    tasks and make backed-off retries due now (``engine.revive.revive_for_rerun``)."""
    run = context.dagster_run
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
