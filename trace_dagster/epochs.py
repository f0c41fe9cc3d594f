"""Epoch partitions in the UI: what a committed or dead range reports, and the partition sync.

A stream asset's partitions are epochs (``trace_core.chain_sync.epochs``). A committed range is
an **observation** of its epoch (the range, its version, rows, and the epoch's progress:
ranges committed / total); the epoch is **materialized** once all its ranges are committed,
with the version of every range. A dead range is an observation carrying its last error.
``partition_sync`` keeps the instance's partitions equal to the epochs: it adds every epoch
of a fixed_target job up front (a follow_head job's up to its head), deletes keys that are
not epochs of the job's current ``epoch_blocks`` (after an edit) and materializes complete
epochs that never were (an existing job's history, or a run that died between its commit and
its report). An epoch is materialized once per set of range versions: each reporter first
claims it in Trace state (``streams.claim_epoch``), so two runs finishing its last ranges at
once record it once. The fine-range partitions of a Trace before epochs live under another
definition name (``job__stream``) and are left as they are.
"""

# No `from __future__ import annotations` here: Dagster resolves annotations at runtime.
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    AssetMaterialization,
    AssetObservation,
    DagsterInstance,
    MetadataValue,
)

from trace_core.engine import orgs, streams
from trace_core.engine.streams import EpochProgress
from trace_core.runtime import Runtime
from trace_dagster.keys import partitions_def_name, stream_asset_key

# Complete epochs materialized per sync at most (each reads its ranges); the rest next tick.
MAX_BACKFILLED_PER_SYNC = 200
# An epoch claimed this long ago yet absent from the instance: its claimer died before its
# report reached Dagster, so the partition sync takes the claim over and reports it.
CLAIM_TAKEOVER_SECONDS = 120.0


def epoch_metadata(p: EpochProgress) -> dict[str, Any]:
    """What an epoch's events carry: its window, progress, rows, bytes, range versions."""
    return {
        "epoch": MetadataValue.text(f"[{p.start}, {p.end})"),
        "ranges_committed": len(p.committed),
        "ranges_total": p.ranges_total,
        "progress": MetadataValue.text(
            f"{len(p.committed)}/{p.ranges_total} ranges, "
            f"{p.blocks_committed}/{p.blocks_expected} blocks"
        ),
        "ranges_dead": len(p.dead),
        "rows": p.rows,
        "bytes": p.bytes,
        "complete": p.complete,
    }


def epoch_materialization(
    p: EpochProgress, *, prefix: str | None = None, **extra: Any
) -> AssetMaterialization:
    """A complete epoch, recording the dataset version of each of its ranges; ``prefix``: its
    org's key prefix (``engine.orgs.runtime_prefix``)."""
    return AssetMaterialization(
        asset_key=stream_asset_key(p.job_name, p.dataset_key, prefix),
        partition=p.key,
        metadata={
            **epoch_metadata(p),
            "dataset_versions": MetadataValue.json(p.versions()),
            **extra,
        },
    )


def range_events(
    rt: Runtime, job_name: str, dataset_key: str, start: int, end: int, meta: dict[str, Any]
) -> list[AssetObservation | AssetMaterialization]:
    """A range just committed: an observation of each epoch it belongs to with ``meta`` and
    the epoch's progress, plus the epoch's materialization when that range completed it.
    ``rt`` acts for the range's org (``Runtime.for_org``): its keys carry the org's prefix."""
    progress = streams.epoch_progress(rt, job_name, dataset_key, start, end)
    prefix = orgs.runtime_prefix(rt)
    out: list[AssetObservation | AssetMaterialization] = []
    for p in progress:
        out.append(
            AssetObservation(
                asset_key=stream_asset_key(job_name, dataset_key, prefix),
                partition=p.key,
                metadata={**meta, **epoch_metadata(p)},
            )
        )
        if p.complete and streams.claim_epoch(rt, p, "range"):
            # once per epoch and range versions, however many finishers saw it complete;
            # a fake range makes its epoch's materialization say so too
            extra = {"fake": meta["fake"]} if meta.get("fake") else {}
            out.append(epoch_materialization(p, prefix=prefix, **extra))
    return out


def epoch_keys_of(rt: Runtime, job_name: str, dataset_key: str, start: int, end: int) -> list[str]:
    """Partition keys of the epochs a range belongs to."""
    return streams.epoch_keys_of(rt, job_name, dataset_key, start, end)


def epoch_size(rt: Runtime, job_name: str) -> int:
    """A chain_sync job's ``epoch_blocks``."""
    return streams.epoch_size(rt, job_name)


@dataclass
class PartitionSync:
    """What the instance lacks: keys to add and delete per partitions definition, and
    materializations of complete epochs it never recorded. ``done`` is False when the
    backfill was capped (the caller syncs again next tick)."""

    add: dict[str, list[str]] = field(default_factory=dict)
    delete: dict[str, list[str]] = field(default_factory=dict)
    materializations: list[AssetMaterialization] = field(default_factory=list)
    done: bool = True


def partition_sync(rt: Runtime, instance: DagsterInstance | None) -> PartitionSync:
    """Compare every stream's epochs (every org's) with ``instance`` (without one: add them
    all)."""
    out = PartitionSync()
    for org_rt in orgs.work_runtimes(rt):
        _sync_org(org_rt, instance, out)
    return out


def _sync_org(rt: Runtime, instance: DagsterInstance | None, out: PartitionSync) -> None:
    prefix = orgs.runtime_prefix(rt)
    for t in streams.stream_targets(rt):
        name = partitions_def_name(t.job_name, t.dataset_key, prefix)
        want = t.epoch_keys()
        if instance is None:
            out.add[name] = want
            continue
        have = instance.get_dynamic_partitions(name)
        known = set(have)
        if missing := [k for k in want if k not in known]:
            out.add[name] = missing
        if stale := [k for k in have if not streams.is_epoch_key(k, t.epoch_blocks)]:
            out.delete[name] = stale
        asset = stream_asset_key(t.job_name, t.dataset_key, prefix)
        done = set(instance.get_materialized_partitions(asset))
        left = MAX_BACKFILLED_PER_SYNC - len(out.materializations)
        progress, complete = streams.complete_epochs_not_in(rt, t, done, left)
        if not complete:
            out.done = False
        for p in progress:
            if not streams.claim_epoch(rt, p, "partition sync", CLAIM_TAKEOVER_SECONDS):
                continue  # reported (or about to be) by the run that completed it
            out.materializations.append(
                epoch_materialization(
                    p, prefix=prefix, reported_by=MetadataValue.text("partition sync")
                )
            )
