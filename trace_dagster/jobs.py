"""The worker job: one run executes a batch of Trace tasks (claim, run, fenced completion),
then keeps taking the work its commits made due (``TRACE_WORKER_CONTINUE_SECONDS``) instead of
ending and waiting for the dispatcher and worker sensors to launch the next run."""

# No `from __future__ import annotations` here: Dagster resolves op/sensor annotations at runtime.
import uuid

from dagster import (
    Config,
    Failure,
    OpExecutionContext,
    in_process_executor,
    job,
    op,
)
from pydantic import Field

from trace_core.engine.execute import TaskOutcome
from trace_core.engine.streams import range_partition_key
from trace_core.engine.worker_run import PlannedRange, run_worker
from trace_dagster.partitions import (
    dead_range_observation,
    materialization_for,
    partitions_def_name,
)
from trace_dagster.resources import TraceResource
from trace_dagster.retry import is_manual_reexecution, revive_for_reexecution
from trace_dagster.transforms import transform_materialization

WORKER_JOB = "trace_worker"


class TaskBatchConfig(Config):
    task_ids: list[str] = Field(description="Trace task ids to execute, in order")


@op(
    description="Claim every task of the batch, execute them TRACE_WORKER_CONCURRENCY at a time; "
    "then plan the next ranges and take more woken tasks until TRACE_WORKER_CONTINUE_SECONDS; "
    "committed ranges are reported as materializations"
)
def execute_tasks(
    context: OpExecutionContext, config: TaskBatchConfig, trace: TraceResource
) -> None:
    rt = trace.get_client()
    if is_manual_reexecution(context.dagster_run):  # e.g. from the UI: revive its dead tasks
        revive_for_reexecution(context, rt, config.task_ids)
    report = run_worker(
        rt,
        [uuid.UUID(raw) for raw in config.task_ids],
        on_outcome=lambda outcome: _report(context, outcome),
        on_planned=lambda planned: _add_partitions(context, planned),
        on_more=lambda n: context.log.info(f"taking {n} more woken task(s)"),
    )
    if report.batches > 1:
        context.log.info(f"{report.batches} batches in this run")
    if report.failures:
        raise Failure(description="; ".join(report.failures))


def _report(context: OpExecutionContext, outcome: TaskOutcome) -> None:
    """Log an outcome and report it on its stream partition."""
    context.log.info(
        f"task {outcome.task_id} attempt {outcome.attempt}: {outcome.status}"
        + (f" ({outcome.error})" if outcome.error else "")
    )
    for event in (
        materialization_for(outcome),
        dead_range_observation(outcome),
        transform_materialization(outcome),
    ):
        if event is not None:
            context.log_event(event)


def _add_partitions(context: OpExecutionContext, planned: list[PlannedRange]) -> None:
    """Ranges this run planned become partitions now (the dispatcher sensor adds only those it
    planned itself; its periodic re-sync would add these later)."""
    by_def: dict[str, list[str]] = {}
    for job_name, dataset_key, start, end in planned:
        by_def.setdefault(partitions_def_name(job_name, dataset_key), []).append(
            range_partition_key(start, end)
        )
    for name, keys in by_def.items():
        context.instance.add_dynamic_partitions(name, keys)


# One op per job: the in-process executor runs it in the run's own process instead of starting
# a second one (about 3 s per launched run, measured by benchmarks/bench_e2e.py).
@job(
    name=WORKER_JOB,
    executor_def=in_process_executor,
    description="Executes Trace tasks woken by the queue (see the trace_worker sensor)",
)
def trace_worker() -> None:
    execute_tasks()
