"""Transform jobs in Dagster: one asset per output (downstream of its inputs), one schedule per
cron trigger, and ``trace_trigger`` (a manual launch from the UI).

- The asset ``transform/<job>/<name>`` depends on its inputs' assets (stream assets, or other
  transforms' outputs), so the lineage graph shows it; an on-input transform whose first input
  is a stream shares that stream's epoch partitions (each run is one of that stream's ranges,
  reported on the range's epoch). Worker runs report each committed run as a materialization
  (``transform_materialization``). Materializing the asset from the UI runs it now, in that
  run: an epoch runs the on-input run of each committed range in it; the unpartitioned asset
  triggers a manual run (idempotent over the same inputs).
- A transform with ``trigger.cron`` gets a schedule whose ticks launch ``trace_trigger`` with the
  tick's time as idempotency key: the op writes source event + task + outbox in one
  transaction (``trace_core.engine.transforms.trigger_run``) and the worker sensor runs the task.
"""

# No `from __future__ import annotations` here: Dagster resolves annotations at runtime.
import logging
from collections.abc import Callable
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetsDefinition,
    Config,
    DynamicPartitionsDefinition,
    Failure,
    MaterializeResult,
    MetadataValue,
    OpExecutionContext,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    asset,
    in_process_executor,
    job,
    op,
    schedule,
)
from pydantic import Field

from trace_core.engine import orgs
from trace_core.engine.execute import TaskOutcome, execute_task
from trace_core.engine.intake import ORG_TAG
from trace_core.engine.streams import epoch_key, parse_partition_key, range_partition_key
from trace_core.engine.transforms import (
    OPERATOR,
    TransformPayload,
    TransformRow,
    applied_transforms,
    run_epoch,
    trigger_run,
)
from trace_core.errors import TraceError
from trace_core.runtime import Runtime
from trace_dagster.epochs import epoch_size
from trace_dagster.partitions import _UNSAFE, partitions_def_name, stream_asset_key
from trace_dagster.resources import TraceResource

log = logging.getLogger(__name__)
TRIGGER_JOB = "trace_trigger"


def transform_asset_key(job_name: str, name: str, prefix: str | None = None) -> AssetKey:
    """``transform/<job>/<name>``; another org's under its prefix (``engine.orgs.key_prefix``)."""
    path = ["transform", _UNSAFE.sub("_", job_name), name]
    return AssetKey([prefix, *path] if prefix else path)


class TriggerConfig(Config):
    job: str = Field(description="The transform job to run")
    kind: str = Field("manual", description="cron | webhook | manual")
    key: str | None = Field(
        None, description="Idempotency key (default: a fingerprint of the pinned input versions)"
    )
    org: str | None = Field(None, description="The transform's org id (default: TRACE_ORG_ID)")


@op(description="Record one trigger of a transform job: source event + task + outbox row")
def trigger_source(
    context: OpExecutionContext, config: TriggerConfig, trace: TraceResource
) -> None:
    rt = trace.get_client().for_org(config.org)
    try:
        got = trigger_run(rt, config.job, config.kind, config.key)  # type: ignore[arg-type]
    except TraceError as exc:
        raise Failure(description=f"trigger of {config.job}: {exc}") from exc
    context.log.info(
        f"{config.job}: task {got.task_id} "
        + ("queued" if got.created else "already triggered with this key: no new run")
    )


@job(name=TRIGGER_JOB, executor_def=in_process_executor, description="Trigger a transform job")
def trace_trigger() -> None:
    trigger_source()


def transform_materialization(
    outcome: TaskOutcome, epoch_blocks: Callable[[str], int], prefix: str | None = None
) -> AssetMaterialization | None:
    """A committed transform run as a materialization of its output asset (of the epoch
    partition holding its range when the run is an on-input run; ``epoch_blocks`` gives a
    chain_sync job's epoch size, ``trace_dagster.epochs.epoch_size``); ``prefix``: the
    task's org's key prefix."""
    if outcome.status != "succeeded" or outcome.operator != OPERATOR:
        return None
    try:
        p = TransformPayload.parse(outcome.payload)
    except TraceError:
        return None
    out = outcome.outputs
    meta: dict[str, str | int] = {
        "block_range": f"[{p.range_start}, {p.range_end})",
        "range": range_partition_key(p.range_start, p.range_end),
        "trigger": p.trigger,
        "task_id": str(outcome.task_id),
        "attempt": outcome.attempt or 0,
        "dataset_version": str(out.get("dataset_version", "")),
        "rows": int(out.get("row_count", 0)),
    }
    return AssetMaterialization(
        asset_key=transform_asset_key(p.job_name, p.transform_name, prefix),
        partition=epoch_key(p.range_start, epoch_blocks(p.job_name)) if p.partitioned else None,
        metadata={k: MetadataValue.text(v) if isinstance(v, str) else v for k, v in meta.items()},
    )


def _run_now(context: AssetExecutionContext, rt: Runtime, t: TransformRow) -> MaterializeResult:
    """Run the transform now: for an epoch partition, the on-input run of each committed range
    of its primary input in that epoch; unpartitioned, a manual run."""
    try:
        if context.has_partition_key:
            start, end = parse_partition_key(context.partition_key)
            task_ids = run_epoch(rt, t, start, end)
            if not task_ids:
                raise Failure(
                    description=f"transform {t.name}: no committed {t.inputs[0]} range in "
                    f"epoch {context.partition_key}"
                )
        else:
            task_ids = [trigger_run(rt, t.name, "manual").task_id]
    except TraceError as exc:
        raise Failure(description=f"transform {t.name}: {exc}") from exc
    meta: dict[str, Any] = {}
    for task_id in task_ids:
        o = execute_task(rt, task_id)
        context.log.info(f"task {task_id}: {o.status}" + (f" ({o.error})" if o.error else ""))
        if o.status == "skipped":  # already done (or running elsewhere): nothing new here
            meta.setdefault("skipped", 0)
            meta["skipped"] += 1
            continue
        mat = transform_materialization(o, lambda job: epoch_size(rt, job), orgs.runtime_prefix(rt))
        if mat is None:
            raise Failure(description=f"transform {t.name} task {task_id}: {o.status}: {o.error}")
        meta.update(mat.metadata)
    meta["task_ids"] = MetadataValue.text(", ".join(str(t) for t in task_ids))
    return MaterializeResult(metadata=meta)


def _dep_key(
    t: TransformRow, key: str, outputs: dict[str, TransformRow], prefix: str | None = None
) -> AssetKey:
    up = outputs.get(key)
    if up:
        return transform_asset_key(up.job_name, up.name, prefix)
    return stream_asset_key(t.job_name, key, prefix)


def transform_asset(
    t: TransformRow, outputs: dict[str, TransformRow], prefix: str | None = None
) -> AssetsDefinition:
    """The output asset of one transform, downstream of its inputs (another org's under its
    key ``prefix``, run as its org)."""
    partitioned = t.on_input and t.inputs[0] not in outputs
    parts = (
        DynamicPartitionsDefinition(name=partitions_def_name(t.job_name, t.inputs[0], prefix))
        if partitioned
        else None
    )
    org = str(t.org_id) if t.org_id else None

    @asset(
        key=transform_asset_key(t.job_name, t.name, prefix),
        deps=[_dep_key(t, key, outputs, prefix) for key in t.inputs],
        partitions_def=parts,
        group_name=_UNSAFE.sub("_", f"{prefix}__{t.job_name}" if prefix else t.job_name),
        tags={ORG_TAG: org} if org else None,
        description=(
            f"transform `{t.name}` ({t.code_kind}) of job {t.job_name}: dataset `{t.output_key}` "
            f"from {', '.join(t.inputs)}. Materializing runs it now."
        ),
        kinds={"parquet", "python" if t.code_kind == "python" else "sql"},
        metadata={"chain_id": t.chain_id, "output": t.output_key, "bundle": t.bundle_sha256 or ""},
    )
    def _transform(context: AssetExecutionContext, trace: TraceResource) -> MaterializeResult:
        return _run_now(context, trace.get_client().for_org(org), t)

    return _transform


def cron_schedule(t: TransformRow, prefix: str | None = None) -> ScheduleDefinition:
    """A schedule launching ``trace_trigger`` for ``t`` at each cron tick (key: the tick time);
    another org's named with its key ``prefix``."""
    assert t.cron is not None
    org = str(t.org_id) if t.org_id else None
    name = f"{prefix}__{t.name}" if prefix else t.name

    @schedule(
        name=f"transform_{_UNSAFE.sub('_', name)}_cron",
        cron_schedule=t.cron,
        job=trace_trigger,
        description=f"cron trigger of transform {t.name} ({t.cron})",
    )
    def _tick(context: ScheduleEvaluationContext) -> RunRequest:
        key = f"cron:{context.scheduled_execution_time.isoformat()}"
        config = {"job": t.name, "kind": "cron", "key": key, **({"org": org} if org else {})}
        return RunRequest(
            run_key=f"{name}:{key}",
            run_config={"ops": {"trigger_source": {"config": config}}},
            tags={
                "trace/job": t.name,
                "trace/source": "cron",
                **({ORG_TAG: org} if org else {}),
            },
        )

    return _tick


def transform_definitions(
    rt: Runtime,
) -> tuple[list[AssetsDefinition], list[ScheduleDefinition]]:
    """Assets and schedules of every applied transform of every org (none if state is
    unavailable)."""
    assets: list[AssetsDefinition] = []
    schedules: list[ScheduleDefinition] = []
    try:
        applied = [(orgs.runtime_prefix(o), *applied_transforms(o)) for o in orgs.work_runtimes(rt)]
    except TraceError as exc:
        log.warning("no transform assets: state unavailable (%s)", exc)
        return [], []
    for prefix, rows, streams in applied:
        outputs = {t.output_key: t for t in rows}
        assets += [
            transform_asset(t, outputs, prefix)
            for t in rows
            if all((t.job_name, k) in streams or k in outputs for k in t.inputs)
        ]
        schedules += [cron_schedule(t, prefix) for t in rows if t.cron and t.enabled]
    return assets, schedules
