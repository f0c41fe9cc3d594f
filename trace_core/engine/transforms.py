"""Transform runs for the shell: each function opens one state connection and calls
``trace_core.transforms`` / ``trace_core.sources``; the row and payload types the shell
reads are re-exported, so trace_dagster imports no transforms module."""

from __future__ import annotations

import uuid

from trace_core.chain_sync import epochs, store
from trace_core.runtime import Runtime
from trace_core.sources.trigger import Kind, Triggered, trigger
from trace_core.transforms import routing
from trace_core.transforms.store import TransformRow, list_transforms
from trace_core.transforms.tasks import OPERATOR, TransformPayload

__all__ = [
    "OPERATOR",
    "TransformPayload",
    "TransformRow",
    "Triggered",
    "applied_transforms",
    "run_epoch",
    "trigger_run",
]


def trigger_run(rt: Runtime, job: str, kind: Kind, key: str | None = None) -> Triggered:
    """Record one trigger of transform ``job`` and create its run, atomically
    (``trace_core.sources.trigger``; ``key`` is the idempotency key)."""
    with rt.state() as conn:
        return trigger(
            conn,
            rt.settings.org_id,
            job,
            kind,
            idempotency_key=key,
            max_attempts=rt.settings.max_attempts,
        )


def run_epoch(rt: Runtime, t: TransformRow, start: int, end: int) -> list[uuid.UUID]:
    """The on-input run of ``t`` for each committed range of its primary input in the epoch
    ``[start, end)`` (task ids, in range order; empty when no range there is committed)."""
    with rt.state() as conn:
        target = epochs.stream_target(conn, rt.settings.org_id, t.job_name, t.inputs[0])
        ranges = [
            (r.range_start, r.range_end)
            for r in epochs.progress_of(conn, target, start, end).committed
        ]
        return [
            routing.run_for_range(
                conn, rt.settings.org_id, t.name, a, b, max_attempts=rt.settings.max_attempts
            )
            for a, b in ranges
        ]


def applied_transforms(rt: Runtime) -> tuple[list[TransformRow], set[tuple[str, str]]]:
    """Every applied transform, and every active chain_sync stream as ``(job, dataset_key)``."""
    with rt.state() as conn:
        rows = list_transforms(conn, rt.settings.org_id)
        streams = {
            (s.job_name, s.dataset_key) for s in store.list_streams(conn, rt.settings.org_id)
        }
    return rows, streams
