"""``trace_dispatcher``: one ``dispatch_tick`` (plan, reap, publish) per tick; the epochs of the
ranges it planned become partitions of their stream assets."""

# No `from __future__ import annotations` here: Dagster resolves op/sensor annotations at runtime.
import time

from dagster import (
    AddDynamicPartitionsRequest,
    AssetKey,
    DagsterInstance,
    DefaultSensorStatus,
    DeleteDynamicPartitionsRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from trace_core.engine import orgs, streams
from trace_core.engine.dispatcher import TickReport, dispatch_tick
from trace_core.engine.progress import every_org_progress_lines
from trace_core.errors import TraceError
from trace_core.runtime import Runtime
from trace_dagster.epochs import PartitionSync, partition_sync
from trace_dagster.partitions import partitions_def_name, stream_asset_key
from trace_dagster.pools import set_pool_limits
from trace_dagster.resources import TraceResource
from trace_dagster.sensors.common import instance_of

PARTITIONS_SYNCED = "partitions-synced"
# How often the dispatcher re-checks that every epoch is a partition in the instance.
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


def tick_message(
    report: TickReport,
    added: int,
    deleted: int,
    materialized: int,
    progress: list[str],
    notes: list[str],
) -> str:
    """What a tick did, in words (the UI shows it as the tick's message instead of "0 runs
    requested": the dispatcher requests no runs, the worker sensor does), then each job's
    progress, ETA and blocked reason."""
    did: list[str] = []
    if report.planned:
        did.append(f"planned ranges in {len(report.planned)} epoch(s)")
    if report.published:
        did.append(f"published {report.published} wake-up(s)")
    if report.retried or report.dead or report.rewoken:
        did.append(
            f"reaped expired leases: {report.retried} retried, {report.dead} dead, "
            f"{report.rewoken} re-woken"
        )
    if report.evaluations:
        did.append(f"queued {report.evaluations} alert evaluation(s)")
    if report.invalidations:
        did.append(f"consumed {report.invalidations} invalidation(s)")
    if added or deleted:
        did.append(f"partitions +{added} -{deleted}")
    if materialized:
        did.append(f"materialized {materialized} complete epoch(s)")
    head = "; ".join(did) if did else "nothing to plan, reap or publish"
    return "\n".join([head, *progress, *notes])


def stale_definitions(
    rows: list[streams.StreamRow], loaded: set[AssetKey], prefix: str | None = None
) -> list[str]:
    """A note naming applied streams (of the org whose key prefix is ``prefix``) whose assets
    the loaded definitions lack."""
    missing = sorted(
        f"{prefix + '/' if prefix else ''}{r.job_name}/{r.dataset_key}"
        for r in rows
        if stream_asset_key(r.job_name, r.dataset_key, prefix) not in loaded
    )
    if not missing:
        return []
    return [
        f"definitions are stale: {', '.join(missing)} applied after they loaded; reload them "
        "(Deployment > Code locations > Reload, or `trace-lite apply` with the stack running)"
    ]


def dispatcher_result(
    rt: Runtime,
    cursor: str | None,
    instance: DagsterInstance | None = None,
    now: float | None = None,
    loaded: set[AssetKey] | None = None,
) -> SensorResult:
    """One dispatcher tick as a sensor result: the epoch partitions of the ranges it planned,
    and a message saying what it did and how far each job is (``tick_message``).

    On the first tick and then every ``PARTITIONS_RESYNC_SECONDS`` it also syncs every
    stream's epochs with ``instance`` (``trace_dagster.epochs.partition_sync``: every epoch of a
    fixed_target job, keys that are no epoch deleted, complete epochs materialized) and sets
    the Dagster pools' limits (``trace_dagster.pools``). A tick whose result never reached the
    daemon (the process died, or the sensor raised after planning, e.g. while the queue was
    down) leaves the cursor as it was, so the daemon's persisted cursor alone cannot heal it;
    the periodic sync does. ``loaded``: the asset keys of the definitions the sensor runs in;
    an applied stream missing from them (applied after they loaded) is named in the message
    with how to reload, instead of its asset sitting greyed out unexplained.
    """
    now = time.time() if now is None else now
    report = dispatch_tick(rt)
    synced_at = _synced_at(cursor)
    resync = synced_at is None or now - synced_at >= PARTITIONS_RESYNC_SECONDS
    sync = partition_sync(rt, instance) if resync else PartitionSync()
    notes: list[str] = []
    if resync and instance is not None:
        try:
            pools = {s.rpc_pool for o in orgs.work_runtimes(rt) for s in streams.list_streams(o)}
            set_pool_limits(instance, pools)
        except TraceError as exc:  # a malformed TRACE_RPC_POOL_*_MAX_CONCURRENT
            notes.append(f"pool limits not set: {exc}")
    by_def = sync.add
    for p in report.planned:
        name = partitions_def_name(p.job_name, p.dataset_key, p.prefix)
        if p.partition_key in by_def.get(name, ()):
            continue
        if instance is not None and instance.has_dynamic_partition(name, p.partition_key):
            continue
        by_def.setdefault(name, []).append(p.partition_key)
    next_cursor = f"{PARTITIONS_SYNCED}:{now:.0f}" if resync and sync.done else cursor
    try:
        progress = every_org_progress_lines(rt)
        if loaded is not None:
            for o in orgs.work_runtimes(rt):
                notes += stale_definitions(streams.list_streams(o), loaded, orgs.runtime_prefix(o))
    except TraceError as exc:
        progress = [f"progress unavailable: {exc}"]
    message = tick_message(
        report,
        added=sum(len(keys) for keys in by_def.values()),
        deleted=sum(len(keys) for keys in sync.delete.values()),
        materialized=len(sync.materializations),
        progress=progress,
        notes=notes,
    )
    return SensorResult(
        dynamic_partitions_requests=[
            *(
                AddDynamicPartitionsRequest(partitions_def_name=name, partition_keys=keys)
                for name, keys in by_def.items()
                if keys
            ),
            *(
                DeleteDynamicPartitionsRequest(partitions_def_name=name, partition_keys=keys)
                for name, keys in sync.delete.items()
            ),
        ],
        asset_events=list(sync.materializations),
        cursor=next_cursor,
        # no run requests ever: the skip message is what the UI shows for the tick
        skip_reason=message,
    )


@sensor(
    name="trace_dispatcher",
    minimum_interval_seconds=5,
    default_status=DefaultSensorStatus.RUNNING,
    description="Plans chain_sync ranges, reaps expired leases and publishes the outbox",
)
def dispatcher_sensor(context: SensorEvaluationContext, trace: TraceResource) -> SensorResult:
    repo = context.repository_def
    loaded = set(repo.asset_graph.get_all_asset_keys()) if repo is not None else None
    return dispatcher_result(
        trace.get_client(), context.cursor, instance_of(context), loaded=loaded
    )
