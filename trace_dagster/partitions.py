"""Stream assets: one asset per chain_sync stream, its epochs as dynamic partitions.

A partition is an epoch (``trace_core.chain_sync.epochs``: ``epoch_blocks`` blocks, the fine
ranges stay in Trace state). Each asset is materializable: launching a partition (UI,
``materialize``, a backfill) runs every uncommitted range of that epoch in that run, reviving
dead ones (``trace_core.engine.execute.run_range``), and materializes the epoch once it is complete.
The worker's own runs report each committed range as an observation of its epoch and the
epoch's materialization when its last range commits (``trace_dagster.epochs``).
"""

# No `from __future__ import annotations` here: Dagster resolves asset annotations at runtime.
import logging

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    DynamicPartitionsDefinition,
    Failure,
    MaterializeResult,
    asset,
)

from trace_core.engine import orgs, streams
from trace_core.engine.intake import ORG_TAG
from trace_core.engine.revive import run_range
from trace_core.engine.streams import StreamRow, parse_partition_key
from trace_core.errors import TraceError
from trace_core.runtime import Runtime
from trace_dagster.epochs import epoch_materialization
from trace_dagster.keys import _UNSAFE, partitions_def_name, stream_asset_key
from trace_dagster.pools import STREAM_BACKFILL_POLICY, dagster_pool
from trace_dagster.resources import TraceResource

log = logging.getLogger(__name__)


def materialize_epoch(
    context: AssetExecutionContext, rt: Runtime, job_name: str, dataset_key: str
) -> MaterializeResult:
    """The stream asset's body: run every range of the partition's epoch that is not committed
    (reviving dead ones) in this run, then materialize the epoch if all of it is committed.

    Fails naming what is left: a range that did not commit (its error), one held by another
    attempt's lease, or blocks not planned yet (the dispatcher plans them in order).
    """
    key = context.partition_key
    where = f"partition {key} of {job_name}/{dataset_key}"
    try:
        start, end = parse_partition_key(key)
        target = streams.stream_target(rt, job_name, dataset_key)
        before = streams.progress_of(rt, target, start, end)
        problems: list[str] = []
        revived = ran = 0
        for r in before.ranges:
            if r.status == "completed":
                continue
            got = run_range(
                rt, job_name, dataset_key, r.key, detail=f"dagster run {context.run_id}"
            )
            o = got.outcome
            ran += 1
            revived += got.revived
            context.log.info(
                f"range {r.key} task {o.task_id} attempt {o.attempt}: {o.status}"
                + (" (revived)" if got.revived else "")
                + (f" ({o.error})" if o.error else "")
            )
            if o.status != "succeeded":
                problems.append(f"range {r.key} (task {o.task_id}): {o.status}: {o.error}")
        after = streams.progress_of(rt, target, start, end)
    except (TraceError, ValueError) as exc:
        raise Failure(description=f"{where}: {exc}") from exc
    if not after.complete:
        if after.blocks_unplanned:
            problems.append(
                f"{after.blocks_unplanned} block(s) not planned yet (the dispatcher plans them)"
            )
        raise Failure(
            description=f"{where} is not complete ({len(after.committed)}/{after.ranges_total} "
            f"ranges committed): " + "; ".join(problems or ["ranges still running"])
        )
    streams.claim_epoch(rt, after, "materialize")  # this run reports it: no finisher again
    mat = epoch_materialization(after)
    return MaterializeResult(
        metadata={**(mat.metadata or {}), "ranges_run": ran, "ranges_revived": revived}
    )


def stream_asset(
    s: StreamRow, prefix: str | None = None, org_id: str | None = None
) -> AssetsDefinition:
    """The materializable asset of one stream; of another org than the deployment's, under
    its key ``prefix`` (``engine.orgs.key_prefix``), its runs acting for ``org_id``."""

    @asset(
        key=stream_asset_key(s.job_name, s.dataset_key, prefix),
        partitions_def=DynamicPartitionsDefinition(
            name=partitions_def_name(s.job_name, s.dataset_key, prefix)
        ),
        group_name=_UNSAFE.sub("_", f"{prefix}__{s.job_name}" if prefix else s.job_name),
        description=(
            f"cryo dataset `{s.cryo_dataset_name}` of chain {s.chain_id} "
            f"(job {s.job_name}); each partition is an epoch of {s.epoch_blocks} blocks "
            "(end-exclusive) whose ranges Trace tracks; it is materialized once all its ranges "
            "are committed. Materializing a partition runs its uncommitted ranges now, "
            "reviving dead ones."
        ),
        kinds={"parquet", "cryo"},
        metadata={"chain_id": s.chain_id, "rpc_pool": s.rpc_pool},
        tags={ORG_TAG: org_id} if org_id else None,
        # a backfill is one run per epoch, each holding a slot of its RPC pool's Dagster pool
        pool=dagster_pool(s.rpc_pool),
        backfill_policy=STREAM_BACKFILL_POLICY,
    )
    def _stream(context: AssetExecutionContext, trace: TraceResource) -> MaterializeResult:
        rt = trace.get_client().for_org(org_id)
        return materialize_epoch(context, rt, s.job_name, s.dataset_key)

    return _stream


def stream_assets(rt: Runtime) -> list[AssetsDefinition]:
    """Assets for every applied stream of every org (``engine.orgs.work_runtimes``); empty
    (with a log line naming the cause) if state is unreachable or not migrated
    (``trace-lite up`` and ``trace-lite migrate`` migrate it)."""
    try:
        rows = [
            (orgs.runtime_prefix(o), str(o.settings.org_id), s)
            for o in orgs.work_runtimes(rt)
            for s in streams.list_streams(o)
        ]
    except TraceError as exc:
        log.warning("no stream assets: state unavailable (%s)", exc)
        return []
    return [stream_asset(s, prefix, org) for prefix, org, s in rows]
