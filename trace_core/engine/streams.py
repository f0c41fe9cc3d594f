"""Streams and their epochs for the shell: each function opens its own state connection and
calls ``trace_core.chain_sync`` (epochs, store, planner); the types and pure key helpers the
shell needs are re-exported, so trace_dagster imports no chain_sync module."""

from __future__ import annotations

from trace_core.chain_sync import epochs, store
from trace_core.chain_sync.epochs import (
    EpochProgress,
    StreamTarget,
    epoch_key,
    epoch_keys_of_range,
    is_epoch_key,
)
from trace_core.chain_sync.planner import parse_partition_key, range_partition_key
from trace_core.chain_sync.store import StreamRow
from trace_core.errors import ChainSyncJobNotFound
from trace_core.operators.payload import RangeLabel
from trace_core.runtime import Runtime

__all__ = [
    "EpochProgress",
    "RangeLabel",
    "StreamRow",
    "StreamTarget",
    "complete_epochs_not_in",
    "epoch_key",
    "epoch_keys_of",
    "epoch_keys_of_range",
    "epoch_progress",
    "epoch_size",
    "is_epoch_key",
    "list_streams",
    "parse_partition_key",
    "progress_of",
    "range_partition_key",
    "stream_target",
    "stream_targets",
]


def list_streams(rt: Runtime) -> list[StreamRow]:
    """Every active stream of the org (with cursors), by job name then key."""
    with rt.state() as conn:
        return store.list_streams(conn, rt.settings.org_id)


def stream_targets(rt: Runtime) -> list[StreamTarget]:
    """Every stream of the org with its epoch layout, inactive ones included."""
    with rt.state() as conn:
        return epochs.stream_targets(conn, rt.settings.org_id)


def stream_target(rt: Runtime, job_name: str, dataset_key: str) -> StreamTarget:
    """One stream. Raises ``ChainSyncJobNotFound`` if the job has no such stream."""
    with rt.state() as conn:
        return epochs.stream_target(conn, rt.settings.org_id, job_name, dataset_key)


def progress_of(rt: Runtime, target: StreamTarget, start: int, end: int) -> EpochProgress:
    """The epoch ``[start, end)`` of ``target``: its ranges and their state now."""
    with rt.state() as conn:
        return epochs.progress_of(conn, target, start, end)


def epoch_progress(
    rt: Runtime, job_name: str, dataset_key: str, start: int, end: int
) -> list[EpochProgress]:
    """Progress of every epoch the block range ``[start, end)`` belongs to (usually one)."""
    with rt.state() as conn:
        return epochs.epoch_progress(conn, rt.settings.org_id, job_name, dataset_key, start, end)


def epoch_keys_of(rt: Runtime, job_name: str, dataset_key: str, start: int, end: int) -> list[str]:
    """Partition keys of the epochs a range belongs to."""
    with rt.state() as conn:
        target = epochs.stream_target(conn, rt.settings.org_id, job_name, dataset_key)
    return epochs.epoch_keys_of_range(start, end, target.epoch_blocks)


def epoch_size(rt: Runtime, job_name: str) -> int:
    """A chain_sync job's ``epoch_blocks``."""
    with rt.state() as conn:
        targets = epochs.stream_targets(conn, rt.settings.org_id, job_name=job_name)
    if not targets:
        raise ChainSyncJobNotFound(job_name)
    return targets[0].epoch_blocks


def complete_epochs_not_in(
    rt: Runtime, target: StreamTarget, recorded: set[str], limit: int
) -> tuple[list[EpochProgress], bool]:
    """The complete epochs of ``target`` whose keys are not in ``recorded``, at most ``limit``;
    the flag is False when the limit cut the list short."""
    out: list[EpochProgress] = []
    with rt.state() as conn:
        for a, b in epochs.complete_epochs(conn, target):
            if epochs.range_partition_key(a, b) in recorded:
                continue
            if len(out) >= limit:
                return out, False
            out.append(epochs.progress_of(conn, target, a, b))
    return out, True


def claim_epoch(
    rt: Runtime, progress: EpochProgress, by: str, takeover_seconds: float | None = None
) -> bool:
    """Whether this caller reports ``progress``'s (complete) epoch materialization: True once
    per epoch and set of range versions (``epochs.claim_materialization``)."""
    with rt.state() as conn:
        return epochs.claim_materialization(
            conn, rt.settings.org_id, progress, by, takeover_seconds
        )
