"""Stream assets: one asset per chain_sync stream, its block ranges as dynamic partitions.

Each asset is materializable: launching a partition (UI, ``materialize``, a backfill) revives
that range's task if it is dead, or runs it now if it is queued, in that run
(``trace_core.engine.revive.run_range``), and reports the committed version like the worker
does. The worker's own runs keep reporting ranges they commit as materializations of the same
partitions.
"""

# No `from __future__ import annotations` here: Dagster resolves asset annotations at runtime.
import logging
import re

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    AssetsDefinition,
    DynamicPartitionsDefinition,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from trace_core.engine.execute import TaskOutcome
from trace_core.engine.revive import run_range
from trace_core.engine.streams import RangeLabel, StreamRow, list_streams, range_partition_key
from trace_core.errors import TraceError
from trace_core.runtime import Runtime
from trace_dagster.resources import TraceResource

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def partitions_def_name(job_name: str, dataset_key: str) -> str:
    return _UNSAFE.sub("_", f"{job_name}__{dataset_key}")


def stream_asset_key(job_name: str, dataset_key: str) -> AssetKey:
    return AssetKey(["chain_sync", _UNSAFE.sub("_", job_name), dataset_key])


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


def materialize_range(
    context: AssetExecutionContext, rt: Runtime, job_name: str, dataset_key: str
) -> MaterializeResult:
    """The stream asset's body: run the partition's range now (reviving it if dead)."""

    key = context.partition_key
    try:
        ran = run_range(rt, job_name, dataset_key, key, detail=f"dagster run {context.run_id}")
    except TraceError as exc:
        raise Failure(description=f"partition {key} of {job_name}/{dataset_key}: {exc}") from exc
    o = ran.outcome
    context.log.info(
        f"range {key} task {o.task_id} attempt {o.attempt}: "
        + ("already committed" if ran.already_committed else o.status)
        + (" (revived)" if ran.revived else "")
        + (f" ({o.error})" if o.error else "")
    )
    mat = materialization_for(o)
    if mat is None:
        raise Failure(
            description=f"range {key} of {job_name}/{dataset_key} (task {o.task_id}) "
            f"did not commit: {o.status}: {o.error}"
        )
    return MaterializeResult(
        metadata={
            **mat.metadata,
            "revived": ran.revived,
            "already_committed": ran.already_committed,
        }
    )


def stream_asset(s: StreamRow) -> AssetsDefinition:
    """The materializable asset of one stream."""

    @asset(
        key=stream_asset_key(s.job_name, s.dataset_key),
        partitions_def=DynamicPartitionsDefinition(
            name=partitions_def_name(s.job_name, s.dataset_key)
        ),
        group_name=_UNSAFE.sub("_", s.job_name),
        description=(
            f"cryo dataset `{s.cryo_dataset_name}` of chain {s.chain_id} "
            f"(job {s.job_name}); each partition is an end-exclusive block range. "
            "Materializing a partition runs that range now, reviving it if it is dead."
        ),
        kinds={"parquet", "cryo"},
        metadata={"chain_id": s.chain_id, "rpc_pool": s.rpc_pool},
    )
    def _stream(context: AssetExecutionContext, trace: TraceResource) -> MaterializeResult:
        return materialize_range(context, trace.get_client(), s.job_name, s.dataset_key)

    return _stream


def stream_assets(rt: Runtime) -> list[AssetsDefinition]:
    """Assets for every applied stream; empty (with a log line naming the cause) if state is
    unreachable or not migrated (``trace-lite up`` and ``trace-lite migrate`` migrate it)."""
    try:
        streams = list_streams(rt)
    except TraceError as exc:
        log.warning("no stream assets: state unavailable (%s)", exc)
        return []
    return [stream_asset(s) for s in streams]
