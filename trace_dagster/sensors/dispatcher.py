"""``trace_dispatcher``: one ``dispatch_tick`` (plan, reap, publish) per tick; the epochs of the
ranges it planned become partitions of their stream assets."""

# No `from __future__ import annotations` here: Dagster resolves op/sensor annotations at runtime.
import time

from dagster import (
    AddDynamicPartitionsRequest,
    DagsterInstance,
    DefaultSensorStatus,
    DeleteDynamicPartitionsRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from trace_core.engine.dispatcher import dispatch_tick
from trace_core.runtime import Runtime
from trace_dagster.epochs import PartitionSync, partition_sync
from trace_dagster.partitions import partitions_def_name
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


def dispatcher_result(
    rt: Runtime,
    cursor: str | None,
    instance: DagsterInstance | None = None,
    now: float | None = None,
) -> SensorResult | SkipReason:
    """One dispatcher tick as a sensor result: the epoch partitions of the ranges it planned.

    On the first tick and then every ``PARTITIONS_RESYNC_SECONDS`` it also syncs every
    stream's epochs with ``instance`` (``trace_dagster.epochs.partition_sync``: every epoch of a
    fixed_target job, keys that are no epoch deleted, complete epochs materialized). A tick
    whose result never reached the daemon (the process died, or the sensor raised after
    planning, e.g. while the queue was down) leaves the cursor as it was, so the daemon's
    persisted cursor alone cannot heal it; the periodic sync does.
    """
    now = time.time() if now is None else now
    report = dispatch_tick(rt)
    synced_at = _synced_at(cursor)
    resync = synced_at is None or now - synced_at >= PARTITIONS_RESYNC_SECONDS
    sync = partition_sync(rt, instance) if resync else PartitionSync()
    by_def = sync.add
    for p in report.planned:
        name = partitions_def_name(p.job_name, p.dataset_key)
        if p.partition_key in by_def.get(name, ()):
            continue
        if instance is not None and instance.has_dynamic_partition(name, p.partition_key):
            continue
        by_def.setdefault(name, []).append(p.partition_key)
    next_cursor = f"{PARTITIONS_SYNCED}:{now:.0f}" if resync and sync.done else cursor
    if not report.did_work and not by_def and not sync.delete and not sync.materializations:
        if next_cursor == cursor:
            return SkipReason("nothing to plan, reap or publish")
        return SensorResult(skip_reason="partitions in sync; nothing to plan", cursor=next_cursor)
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
    )


@sensor(
    name="trace_dispatcher",
    minimum_interval_seconds=5,
    default_status=DefaultSensorStatus.RUNNING,
    description="Plans chain_sync ranges, reaps expired leases and publishes the outbox",
)
def dispatcher_sensor(
    context: SensorEvaluationContext, trace: TraceResource
) -> SensorResult | SkipReason:
    return dispatcher_result(trace.get_client(), context.cursor, instance_of(context))
