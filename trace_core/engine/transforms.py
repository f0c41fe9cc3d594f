"""Transforms for the shell: applied transform jobs (with the streams their inputs name),
triggering one, and preparing the run a materialized asset asks for. The shell
(``trace_dagster.transforms``) calls these; it opens no connection itself."""

from __future__ import annotations

import uuid

from trace_core.chain_sync import store as chain_sync_store
from trace_core.runtime import Runtime
from trace_core.sources.trigger import Kind, Triggered, trigger
from trace_core.transforms import routing
from trace_core.transforms.store import TransformRow, list_transforms
from trace_core.transforms.tasks import OPERATOR, TransformPayload

__all__ = [
    "OPERATOR",
    "TransformPayload",
    "TransformRow",
    "applied_transforms",
    "run_for",
    "trigger_transform",
]


def trigger_transform(rt: Runtime, job: str, kind: Kind, key: str | None = None) -> Triggered:
    """One trigger of transform ``job``: source event + task + outbox row in one transaction
    (``sources.trigger``); the same key twice makes one run."""
    with rt.state() as conn:
        return trigger(
            conn,
            rt.settings.org_id,
            job,
            kind,
            idempotency_key=key,
            max_attempts=rt.settings.max_attempts,
        )


def run_for(rt: Runtime, name: str, block_range: tuple[int, int] | None) -> uuid.UUID:
    """The task a materialized transform asset runs now: the on-input run of that range for a
    partition, else a manual trigger (idempotent over the same inputs)."""
    with rt.state() as conn:
        if block_range is not None:
            start, end = block_range
            return routing.run_for_range(
                conn, rt.settings.org_id, name, start, end, max_attempts=rt.settings.max_attempts
            )
        return trigger(
            conn, rt.settings.org_id, name, "manual", max_attempts=rt.settings.max_attempts
        ).task_id


def applied_transforms(rt: Runtime) -> tuple[list[TransformRow], set[tuple[str, str]]]:
    """Every applied transform, and the (job, stream) pairs applied (what their inputs may
    name). Raises ``TraceError`` if state is unavailable."""
    with rt.state() as conn:
        rows = list_transforms(conn, rt.settings.org_id)
        streams = {
            (s.job_name, s.dataset_key)
            for s in chain_sync_store.list_streams(conn, rt.settings.org_id)
        }
    return rows, streams
