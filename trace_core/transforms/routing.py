"""On-input runs: a committed input version becomes ``udf_transform`` tasks.

Called by ``alerts.routing.route_event`` for each ``dataset_version_committed`` event (inside
its state transaction, once per job the version belongs to), like alert evaluations. A
transform is partitioned like its first input: one run per committed version of ``inputs[0]``,
created once every other input covers that version's range (the commit that completes the
coverage creates it, whichever input it belongs to). The task id is
``uuid5(transform_id, primary version)``, so a replayed event creates nothing twice.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from psycopg import Connection

from trace_core.datasets import registry
from trace_core.transforms import store
from trace_core.transforms.tasks import build_payload, covering_pins, create_run, pin, run_task_id

log = logging.getLogger(__name__)


def route_version(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    ev: Mapping[str, Any],
    *,
    max_attempts: int,
) -> int:
    """Create the on-input runs one parsed version event (with its ``job_name``) triggers, in
    the caller's transaction. Returns how many tasks were new."""
    created = 0
    for t in store.routed_transforms(conn, org_id, ev["job_name"], ev["dataset_key"]):
        primary = t.inputs[0]
        if ev["dataset_key"] == primary:
            candidates = [
                r
                for r in registry.versions_for_stream(conn, org_id, t.chain_id, primary)
                if str(r.dataset_version) == ev["dataset_version"]
            ]
        else:  # a secondary input landed: the primary ranges it overlaps may now be covered
            candidates = [
                r
                for r in registry.versions_for_stream(conn, org_id, t.chain_id, primary)
                if r.range_end > ev["range_start"] and r.range_start < ev["range_end"]
            ]
        for rec in candidates:
            got = ensure_run(conn, org_id, t, rec, max_attempts=max_attempts)
            created += int(got is not None and got[1])
    return created


def ensure_run(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    t: store.TransformRow,
    rec: registry.VersionRecord,
    *,
    max_attempts: int,
) -> tuple[uuid.UUID, bool] | None:
    """The on-input run of ``t`` over the primary input version ``rec`` (created with its
    outbox wake-up unless it exists): ``(task_id, created)``, or None while another input does
    not cover the range yet."""
    grants = [pin(rec)]
    for key in t.inputs[1:]:
        pins = covering_pins(conn, org_id, t, key, rec.range_start, rec.range_end)
        if pins is None:
            return None
        grants.extend(pins)
    payload = build_payload(
        t,
        grants=grants,
        range_start=rec.range_start,
        range_end=rec.range_end,
        trigger="on_input",
        source={"dataset_key": t.inputs[0], "dataset_version": str(rec.dataset_version)},
        partitioned=t.inputs[0] not in store.output_keys(conn, org_id, t.job_name),
    )
    task_id = run_task_id(t.transform_id, str(rec.dataset_version))
    created = create_run(conn, task_id, payload, max_attempts=max_attempts)
    if created:
        log.info(
            "transform run created",
            extra={
                "transform": t.name,
                "task_id": str(task_id),
                "range": f"{rec.range_start}:{rec.range_end}",
            },
        )
    return task_id, created


def run_for_range(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    name: str,
    start: int,
    end: int,
    *,
    max_attempts: int,
) -> uuid.UUID:
    """The on-input run of transform ``name`` for the primary input's range ``[start, end)``
    (what materializing one partition of its asset runs). Raises ``TransformNotFound``, or
    ``DatasetNotSynced`` when that range of an input is not committed."""
    from trace_core.errors import DatasetNotSynced

    with conn.transaction():
        t = store.get_transform(conn, org_id, name)
        recs = [
            r
            for r in registry.versions_for_stream(conn, org_id, t.chain_id, t.inputs[0])
            if (r.range_start, r.range_end) == (start, end)
        ]
        got = ensure_run(conn, org_id, t, recs[0], max_attempts=max_attempts) if recs else None
        if got is None:
            raise DatasetNotSynced(
                f"transform {name!r}: inputs are not committed over [{start}, {end})",
                job=t.job_name,
            )
        return got[0]
