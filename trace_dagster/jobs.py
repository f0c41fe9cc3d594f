"""The worker job: one run executes a batch of Trace tasks (claim, run, fenced completion),
then keeps taking the work its commits made due (``TRACE_WORKER_CONTINUE_SECONDS``) instead of
ending and waiting for the dispatcher and worker sensors to launch the next run."""

# No `from __future__ import annotations` here: Dagster resolves op/sensor annotations at runtime.
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    Config,
    DagsterInstance,
    Failure,
    HookContext,
    MetadataValue,
    OpExecutionContext,
    failure_hook,
    in_process_executor,
    job,
    op,
)
from dagster._core.definitions.events import (  # not public API: see report_failed_partition
    AssetMaterializationFailure,
    AssetMaterializationFailureReason,
    AssetMaterializationFailureType,
)
from dagster._core.events import AssetMaterializationPlannedData, DagsterEvent
from pydantic import Field

from trace_core import profile
from trace_core.engine import orgs
from trace_core.engine.execute import TaskOutcome
from trace_core.engine.intake import ORG_TAG, task_tags
from trace_core.engine.streams import RangeLabel, range_partition_key
from trace_core.engine.worker_run import PlannedRange, run_worker
from trace_core.runtime import Runtime
from trace_dagster.epochs import epoch_keys_of, epoch_size, range_events
from trace_dagster.partitions import partitions_def_name, stream_asset_key
from trace_dagster.resources import TraceResource
from trace_dagster.retry import is_manual_reexecution, revive_for_reexecution, touched_metadata
from trace_dagster.transforms import transform_materialization

WORKER_JOB = "trace_worker"
# A continuing run adds the tags of the tasks it took on, and logs the lines of its succeeded
# tasks, at most this often (and at its end).
RUN_TAGS_EVERY_SECONDS = 2.0


class TaskBatchConfig(Config):
    task_ids: list[str] = Field(description="Trace task ids to execute, in order")


def range_metadata(outcome: TaskOutcome) -> dict[str, Any]:
    """What a committed range reports: its block range, task, attempt, version and size."""
    label, out = RangeLabel.of(outcome.payload), outcome.outputs
    assert label.block_range is not None
    start, end = label.block_range
    meta: dict[str, str | int] = {
        "block_range": f"[{start}, {end})",
        "range": range_partition_key(start, end),
        "task_id": str(outcome.task_id),
        "attempt": outcome.attempt or 0,
    }
    for name in ("dataset_version", "manifest_key", "storage_prefix"):
        if name in out:
            meta[name] = str(out[name])
    for name in ("row_count", "bytes", "file_count"):
        if name in out:
            meta[name] = int(out[name])
    # made-up data (TRACE_CRYO_MODE=fake) must be visible where the range shows as done
    meta["fake"] = bool(out.get("fake", False))
    return {k: MetadataValue.text(v) if isinstance(v, str) else v for k, v in meta.items()}


def committed_range_events(
    rt: Runtime, outcome: TaskOutcome
) -> list[AssetObservation | AssetMaterialization]:
    """A committed chain_sync range as an observation of its epoch partition (with the epoch's
    progress), plus the epoch's materialization when this range completed it."""
    label = RangeLabel.of(outcome.payload)
    if outcome.status != "succeeded" or not label.is_chain_sync_range or not label.block_range:
        return []
    start, end = label.block_range
    return range_events(
        rt, str(label.job_name), str(label.dataset_key), start, end, range_metadata(outcome)
    )


def _dead_range(rt: Runtime, outcome: TaskOutcome) -> tuple[AssetKey, list[str], int, int] | None:
    """A dead chain_sync range's stream asset, the epoch partitions it belongs to, and its
    block range; None for any other outcome."""
    label = RangeLabel.of(outcome.payload)
    if outcome.status != "dead" or not label.is_chain_sync_range or not label.block_range:
        return None
    start, end = label.block_range
    job, stream = str(label.job_name), str(label.dataset_key)
    asset_key = stream_asset_key(job, stream, orgs.runtime_prefix(rt))
    return asset_key, epoch_keys_of(rt, job, stream, start, end), start, end


def dead_range_observations(rt: Runtime, outcome: TaskOutcome) -> list[AssetObservation]:
    """A chain_sync range that ended dead, as an observation of its epoch partition carrying
    the range, the last error and how to revive it (the UI shows it in the asset's events)."""
    dead = _dead_range(rt, outcome)
    if dead is None:
        return []
    asset_key, keys, start, end = dead
    return [
        AssetObservation(
            asset_key=asset_key,
            partition=key,
            metadata={
                "status": "dead",
                "range": range_partition_key(start, end),
                "block_range": MetadataValue.text(f"[{start}, {end})"),
                "task_id": str(outcome.task_id),
                "attempt": outcome.attempt or 0,
                "last_error": MetadataValue.text(outcome.error or ""),
                "revive": MetadataValue.text(
                    "re-execute this run, materialize this partition (revives the epoch's dead "
                    f"ranges), or trace-lite retry --task {outcome.task_id}"
                ),
            },
        )
        for key in keys
    ]


def dead_range_failures(rt: Runtime, outcome: TaskOutcome) -> list[AssetMaterializationFailure]:
    """A dead chain_sync range as a failed materialization of each epoch it belongs to, the
    last error as its description: the partition shows as failed (not missing) in the UI."""
    dead = _dead_range(rt, outcome)
    if dead is None:
        return []
    asset_key, keys, start, end = dead
    return [
        AssetMaterializationFailure(
            asset_key=asset_key,
            partition=key,
            failure_type=AssetMaterializationFailureType.FAILED,
            reason=AssetMaterializationFailureReason.FAILED_TO_MATERIALIZE,
            description=f"range {range_partition_key(start, end)} is dead: {outcome.error or ''}",
            metadata={
                "range": range_partition_key(start, end),
                "task_id": str(outcome.task_id),
                "attempt": outcome.attempt or 0,
                "last_error": MetadataValue.text(outcome.error or ""),
                "revive": MetadataValue.text(
                    "materialize this partition, re-execute this run, or "
                    f"trace-lite retry --task {outcome.task_id}"
                ),
            },
        )
        for key in keys
    ]


def report_failed_partition(
    context: OpExecutionContext, failure: AssetMaterializationFailure
) -> None:
    """Record ``failure`` in this run's event log as Dagster records an asset that failed in a
    run: a planned materialization of the partition, then its failure. Dagster marks a
    partition failed when its latest planned materialization belongs to a failed run (this run
    fails: the range is dead) and has no materialization after it; the epoch's later
    materialization clears it. Dagster offers no public API for either event, so this builds
    them as its step execution does."""
    step = context.get_step_execution_context().step.key
    planned = DagsterEvent.build_asset_materialization_planned_event(
        context.job_name,
        step,
        AssetMaterializationPlannedData(failure.asset_key, partition=failure.partition),
    )
    context.log.log_dagster_event(logging.DEBUG, planned.message or "", planned)
    failed = DagsterEvent.build_asset_failed_to_materialize_event(context.job_name, step, failure)
    context.log.log_dagster_event(logging.ERROR, failure.description or "", failed)


@op(
    description="Claim every task of the batch, execute them TRACE_WORKER_CONCURRENCY at a time; "
    "then plan the next ranges and take more woken tasks until TRACE_WORKER_CONTINUE_SECONDS; "
    "committed ranges are reported on their epoch partitions"
)
def execute_tasks(
    context: OpExecutionContext, config: TaskBatchConfig, trace: TraceResource
) -> None:
    rt = trace.get_client()
    batch = config.task_ids
    if is_manual_reexecution(context.dagster_run):  # e.g. from the UI: revive its dead tasks
        batch = revive_for_reexecution(context, rt, batch)
    tags = RunTagger(context.instance, context.run_id, context.dagster_run.tags)
    lines = LineBatcher(context.log.info)
    known: set[tuple[str, str]] = set()  # (partitions def, key) known to exist
    # reporting reads a few state rows per range: on the run's connections, not a new one each
    with rt.reused_state() as reused:
        report_rt = rt.reusing(reused)
        try:
            report = run_worker(
                rt,
                [uuid.UUID(raw) for raw in batch],
                on_outcome=lambda outcome: _report(context, report_rt, outcome, tags, lines),
                on_planned=lambda planned: _add_partitions(context, report_rt, planned, known),
                on_more=lambda n: context.log.info(f"taking {n} more woken task(s)"),
            )
        finally:
            lines.flush()
            tags.flush()
    if report.batches > 1:
        context.log.info(f"{report.batches} batches in this run")
    if report.failures:
        raise Failure(
            description="; ".join(report.failures), metadata=touched_metadata(report.touched)
        )


class _Periodic:
    """Written at most once per ``every`` seconds (``due``), and when ``flush`` says so."""

    def __init__(self, every: float) -> None:
        self._every = every
        self._last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self._every


class LineBatcher(_Periodic):
    """The log lines of a run's succeeded tasks, logged together as one event at most once
    per ``every`` seconds while the run goes on, and the rest when it ends (``flush``): a
    Dagster event per range (a sqlite commit in Lite, on the reporter thread whose CPU shares
    the run's GIL with its attempts) was a third of a range's reporting. A failure's line is
    logged at once (``error``), after the lines waiting, so the log keeps their order."""

    def __init__(self, log: Callable[[str], object], every: float = RUN_TAGS_EVERY_SECONDS):
        super().__init__(every)
        self._log = log
        self._pending: list[str] = []

    def add(self, line: str) -> None:
        self._pending.append(line)
        if self.due():
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if self._pending:
            pending, self._pending = self._pending, []
            self._log("\n".join(pending))


class RunTagger(_Periodic):
    """The run tags of the tasks a continuing run takes on after its first batch (whose tags
    the run was created with), added to the run in batches: at most one ``add_run_tags`` per
    ``every`` seconds while the run goes on (one per range, a read and a sqlite commit of the
    run in Lite, was a quarter of the reporting's CPU and half its wall time), and the rest
    when the run ends (``flush``). Each key is written once."""

    def __init__(
        self,
        instance: DagsterInstance,
        run_id: str,
        tags: Mapping[str, str],
        every: float = RUN_TAGS_EVERY_SECONDS,
    ):
        super().__init__(every)
        self._instance = instance
        self._run_id = run_id
        self._have = dict(tags)
        self._pending: dict[str, str] = {}

    @property
    def have(self) -> dict[str, str]:
        """The run's tags, with those not yet written."""
        return {**self._have, **self._pending}

    def add(self, tags: dict[str, str]) -> None:
        have = self.have
        self._pending.update({k: v for k, v in tags.items() if have.get(k) != v})
        if self._pending and self.due():
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        self._instance.add_run_tags(self._run_id, pending)
        self._have.update(pending)


def outcome_line(outcome: TaskOutcome) -> str:
    """One line per task: ``range 0-50 of demo/blocks: succeeded, 50 rows, 1.20 s, attempt 1,
    task <id>``; a failure ends in Trace's error (``Kind: message``)."""
    label = RangeLabel.of(outcome.payload)
    if label.block_range is not None:
        what = (
            f"range {label.range_start}-{label.range_end} of {label.job_name}/{label.dataset_key}"
        )
    else:
        what = f"{outcome.operator or 'task'}" + (f" of {label.job_name}" if label.job_name else "")
    facts = [str(outcome.status)]
    rows = outcome.outputs.get("row_count")
    if rows is not None:
        facts.append(f"{int(rows)} rows")
    if outcome.seconds is not None:
        facts.append(f"{outcome.seconds:.2f} s")
    facts.append(f"attempt {outcome.attempt}, task {outcome.task_id}")
    done = f"{what}: " + ", ".join(facts)
    if outcome.error:
        done += f": {outcome.error}"
    return done


def _report(
    context: OpExecutionContext,
    rt: Runtime,
    outcome: TaskOutcome,
    run_tags: RunTagger,
    lines: LineBatcher,
) -> None:
    """Log an outcome (one line; a success's in ``lines``' batches), tag the run with its
    range (``run_tags``: in batches), and
    report it on its epoch partition: committed ranges as observations (and the epoch's
    materialization), a dead range as a failed materialization of its epoch carrying the last
    error. The events name the task's org's assets (``rt.for_org``: another org's keys carry
    its prefix)."""
    rt = rt.for_org(outcome.org_id)
    line = outcome_line(outcome)
    with profile.run_phase("report: log"):
        if outcome.status in ("retry", "dead"):
            lines.flush()
            context.log.error(line)
        else:
            lines.add(line)
    tags = task_tags(outcome.task_id, outcome.attempt or 0, outcome.payload)
    ran_for = set(filter(None, run_tags.have.get(ORG_TAG, "").split(",")))
    if outcome.org_id is not None and str(outcome.org_id) not in ran_for:
        # a later wave's task of another org: the run names every org it worked for
        tags[ORG_TAG] = ",".join(sorted({*ran_for, str(outcome.org_id)}))
    with profile.run_phase("report: tags"):
        run_tags.add(tags)  # a later wave's task: untagged so far
    with profile.run_phase("report: events"):
        events: list[Any] = [
            *committed_range_events(rt, outcome),
            *dead_range_observations(rt, outcome),
            transform_materialization(
                outcome, lambda job: epoch_size(rt, job), orgs.runtime_prefix(rt)
            ),
        ]
    with profile.run_phase("report: write"):
        for event in events:
            if event is not None:
                context.log_event(event)
    for failure in dead_range_failures(rt, outcome):
        report_failed_partition(context, failure)


def _add_partitions(
    context: OpExecutionContext,
    rt: Runtime,
    planned: list[PlannedRange],
    known: set[tuple[str, str]],
) -> None:
    """Epochs of the ranges this run planned become partitions now (the dispatcher sensor adds
    only those it planned itself; its periodic sync would add these later). ``known``: the
    (definition, key) pairs this run saw exist or added (a read each, not one per take)."""
    by_def: dict[str, set[str]] = {}
    for job_name, dataset_key, start, end, org_id in planned:
        org_rt = rt.for_org(org_id)
        name = partitions_def_name(job_name, dataset_key, orgs.runtime_prefix(org_rt))
        by_def.setdefault(name, set()).update(
            epoch_keys_of(org_rt, job_name, dataset_key, start, end)
        )
    for name, keys in by_def.items():
        new = [
            k
            for k in sorted(keys)
            if (name, k) not in known and not context.instance.has_dynamic_partition(name, k)
        ]
        if new:
            context.instance.add_dynamic_partitions(name, new)
        known.update((name, k) for k in keys)


@failure_hook
def trace_error_lines(context: HookContext) -> None:
    """After a failed batch, end the run's log with Trace's error lines (one per failed task):
    Dagster prints its own frames under the step failure, and they should not be the last
    thing a reader sees."""
    exc = context.op_exception
    description = getattr(exc, "description", None) or (str(exc) if exc else "")
    for line in [part for part in description.split("; ") if part] or ["unknown error"]:
        context.log.error(f"failed: {line}")


# One op per job: the in-process executor runs it in the run's own process instead of starting
# a second one (about 3 s per launched run, measured by benchmarks/bench_e2e.py).
@job(
    name=WORKER_JOB,
    executor_def=in_process_executor,
    description="Executes Trace tasks woken by the queue (see the trace_worker sensor)",
    hooks={trace_error_lines},
)
def trace_worker() -> None:
    execute_tasks()
