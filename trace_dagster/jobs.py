"""The worker job: one run executes a batch of Trace tasks (claim, run, fenced completion),
then keeps taking the work its commits made due (``TRACE_WORKER_CONTINUE_SECONDS``) instead of
ending and waiting for the dispatcher and worker sensors to launch the next run."""

# No `from __future__ import annotations` here: Dagster resolves op/sensor annotations at runtime.
import functools
import time
import uuid
from collections.abc import Callable

from dagster import (
    AssetMaterialization,
    AssetObservation,
    Config,
    Failure,
    MetadataValue,
    OpExecutionContext,
    in_process_executor,
    job,
    op,
)
from pydantic import Field

from trace_core import builtin_operators
from trace_core.chain_sync.planner import range_partition_key
from trace_core.operators.payload import RangeLabel
from trace_core.worker import TaskOutcome, execute_batch, take_more_work
from trace_dagster.partitions import partitions_def_name, stream_asset_key
from trace_dagster.resources import TraceResource
from trace_dagster.retry import is_manual_reexecution, revive_for_reexecution, touched_metadata
from trace_dagster.transforms import transform_materialization

WORKER_JOB = "trace_worker"


class TaskBatchConfig(Config):
    task_ids: list[str] = Field(description="Trace task ids to execute, in order")


def materialization_for(outcome: TaskOutcome) -> AssetMaterialization | None:
    """A committed chain_sync range as a materialized partition of its stream asset."""
    label, out = RangeLabel.of(outcome.payload), outcome.outputs
    if outcome.status != "succeeded" or not label.is_chain_sync_range or not label.block_range:
        return None
    start, end = label.block_range
    meta: dict[str, str | int] = {
        "block_range": f"[{start}, {end})",
        "task_id": str(outcome.task_id),
        "attempt": outcome.attempt or 0,
    }
    for name in ("dataset_version", "manifest_key", "storage_prefix"):
        if name in out:
            meta[name] = str(out[name])
    for name in ("row_count", "bytes", "file_count"):
        if name in out:
            meta[name] = int(out[name])
    return AssetMaterialization(
        asset_key=stream_asset_key(str(label.job_name), str(label.dataset_key)),
        partition=range_partition_key(start, end),
        metadata={k: MetadataValue.text(v) if isinstance(v, str) else v for k, v in meta.items()},
    )


def dead_range_observation(outcome: TaskOutcome) -> AssetObservation | None:
    """A chain_sync range that ended dead, as an observation of its stream partition carrying
    the last error and how to revive it (the UI shows it in the asset's events)."""
    label = RangeLabel.of(outcome.payload)
    if outcome.status != "dead" or not label.is_chain_sync_range or not label.block_range:
        return None
    return AssetObservation(
        asset_key=stream_asset_key(str(label.job_name), str(label.dataset_key)),
        partition=range_partition_key(*label.block_range),
        metadata={
            "status": "dead",
            "task_id": str(outcome.task_id),
            "attempt": outcome.attempt or 0,
            "last_error": MetadataValue.text(outcome.error or ""),
            "revive": MetadataValue.text(
                "re-execute this run, materialize this partition, or "
                f"trace-lite retry --task {outcome.task_id}"
            ),
        },
    )


@op(
    description="Claim every task of the batch, execute them TRACE_WORKER_CONCURRENCY at a time; "
    "then plan the next ranges and take more woken tasks until TRACE_WORKER_CONTINUE_SECONDS; "
    "committed ranges are reported as materializations"
)
def execute_tasks(
    context: OpExecutionContext, config: TaskBatchConfig, trace: TraceResource
) -> None:
    rt = trace.get_client()
    batch = config.task_ids
    if is_manual_reexecution(context.dagster_run):  # e.g. from the UI: revive its dead tasks
        batch = revive_for_reexecution(context, rt, batch)
    deadline = time.monotonic() + rt.settings.worker_continue_seconds
    failures: list[str] = []
    task_ids = [uuid.UUID(raw) for raw in batch]
    touched: list[uuid.UUID] = []  # every wave's tasks: a re-execution revives them all
    on_claimed: Callable[[], None] | None = None
    registry = builtin_operators.default_registry()  # once per run
    batches = 0
    while task_ids:
        batches += 1
        touched += task_ids
        for outcome in execute_batch(
            rt,
            task_ids,
            concurrency=rt.settings.worker_concurrency,
            registry=registry,
            on_claimed=on_claimed,
        ):
            failures += _report(context, outcome)
        if failures or time.monotonic() >= deadline:
            break  # a failing run ends: its retries run (and show) as runs of their own
        more = take_more_work(rt, rt.settings.worker_batch_size)
        _add_partitions(context, more.planned)
        task_ids = more.task_ids
        on_claimed = functools.partial(more.ack, rt)
        if task_ids:
            context.log.info(f"taking {len(task_ids)} more woken task(s)")
    if batches > 1:
        context.log.info(f"{batches} batches in this run")
    if failures:
        raise Failure(description="; ".join(failures), metadata=touched_metadata(touched))


def _report(context: OpExecutionContext, outcome: TaskOutcome) -> list[str]:
    """Log an outcome, report it on its stream partition, and return its failure line if any."""
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
    if outcome.status in ("retry", "dead"):
        return [
            f"task {outcome.task_id} attempt {outcome.attempt} -> {outcome.status}: {outcome.error}"
        ]
    return []


def _add_partitions(context: OpExecutionContext, planned: list[tuple[str, str, int, int]]) -> None:
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
