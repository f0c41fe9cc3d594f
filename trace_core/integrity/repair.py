"""Repair: re-sync exactly the broken ranges of a stream as new dataset versions.

A repair is an ordinary ``cryo_ingest`` task (task row + outbox wake-up in one state
transaction) over the broken range, so it runs through the worker, fencing and the commit
protocol like any planned range and is reported as a new materialization of the range's
partition. Its ``config_hash`` is the stream's plus ``:repair-{generation}`` (generation =
versions of that exact range already registered), so the commit registers a NEW version under
a new prefix; the broken version's objects are never written again, and the newer version
wins in ``registry.visible_parts``. The task id derives from (dataset, range, generation):
asking twice before the repair commits plans nothing twice.

Each repaired range is also recorded as a ``correction`` in ``data.data_invalidations`` (keyed
by the repair task, once), which ``trace_core.integrity.invalidations`` consumes.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from psycopg import Connection
from psycopg.types.json import Jsonb

from trace_core.chain_sync import store
from trace_core.chain_sync.planner import DEFAULT_MAX_ATTEMPTS, OPERATOR, task_payload
from trace_core.chain_sync.store import StreamRow
from trace_core.db.queries import q
from trace_core.integrity.verify import StreamReport
from trace_core.runtime import Runtime
from trace_core.tasks.lifecycle import create_task

log = logging.getLogger(__name__)

REPAIR_NS = uuid.UUID("0d3c1c9e-5d8e-4a52-9a55-2a7f4f0b6e11")
REPAIR_SUFFIX = ":repair-"


@dataclass(frozen=True)
class PlannedRepair:
    job_name: str
    dataset_key: str
    range_start: int
    range_end: int
    task_id: uuid.UUID
    config_hash: str
    created: bool
    reasons: tuple[str, ...]


def repair_task_id(dataset_uuid: uuid.UUID, start: int, end: int, generation: int) -> uuid.UUID:
    return uuid.uuid5(REPAIR_NS, f"repair:{dataset_uuid}:{start}:{end}:{generation}")


def repair_config_hash(base: str, generation: int) -> str:
    """The stream's config hash with the repair generation: a distinct version id per repair."""
    return f"{base.split(REPAIR_SUFFIX)[0]}{REPAIR_SUFFIX}{generation}"


def ranges_to_repair(report: StreamReport) -> dict[tuple[int, int], tuple[str, ...]]:
    """``{(start, end): finding kinds}``: the blocks each failing version serves, and each
    coverage gap. Ranges are end-exclusive and never overlap."""
    out: dict[tuple[int, int], set[str]] = {}
    for r in report.ranges:
        if r.passed:
            continue
        for span in r.served:
            out.setdefault(span, set()).update(f.kind for f in r.findings)
    for gap in report.gaps:
        out.setdefault((gap.range_start, gap.range_end), set()).add(gap.kind)
    return {span: tuple(sorted(kinds)) for span, kinds in sorted(out.items())}


def plan_repair(
    conn: Connection[Any],
    org_id: str,
    s: StreamRow,
    start: int,
    end: int,
    *,
    reasons: tuple[str, ...] = (),
    key: str | None = None,
) -> PlannedRepair:
    """Create (once) the cryo_ingest task that re-syncs ``[start, end)`` of stream ``s`` as a
    new version, with its wake-up, in the caller's transaction.

    ``key`` (say, an invalidation id) makes the task id independent of the generation, so a
    caller replaying after a crash finds the task it created before."""
    job = store.get_job(conn, org_id, s.job_id)
    row = conn.execute(
        q("integrity", "count_range_versions"),
        {"dataset_uuid": s.dataset_uuid, "range_start": start, "range_end": end},
    ).fetchone()
    generation = int(row[0]) if row else 0
    config = repair_config_hash(s.config_hash, generation)
    payload = task_payload(
        {"chain_id": s.chain_id, "job_id": s.job_id, "name": s.job_name},
        {
            "dataset_key": s.dataset_key,
            "dataset_uuid": s.dataset_uuid,
            "cryo_dataset_name": s.cryo_dataset_name,
            "rpc_pool": s.rpc_pool,
            "config_hash": config,
            "cryo_options": s.cryo_options,
        },
        start,
        end,
    )
    payload["repair"] = {"generation": generation, "reasons": list(reasons)}
    task_id = (
        uuid.uuid5(REPAIR_NS, f"repair:{s.dataset_uuid}:{start}:{end}:{key}")
        if key is not None
        else repair_task_id(s.dataset_uuid, start, end, generation)
    )
    created = create_task(
        conn,
        task_id=task_id,
        operator=OPERATOR,
        payload=payload,
        max_attempts=job.max_attempts or DEFAULT_MAX_ATTEMPTS,
        job_id=s.job_id,
        paused=not job.enabled,
    )
    return PlannedRepair(
        s.job_name, s.dataset_key, start, end, task_id, config, created, tuple(reasons)
    )


def record_correction(rt: Runtime, chain_id: int, repair: PlannedRepair) -> None:
    """Record the repaired range in ``data.data_invalidations`` (once per repair task)."""
    with rt.data() as conn, conn.transaction():
        conn.execute(
            q("integrity", "insert_correction"),
            {
                "chain_id": chain_id,
                "range_start": repair.range_start,
                "range_end": repair.range_end,
                "task_id": str(repair.task_id),
                "details": Jsonb(
                    {
                        "source": "verify --repair",
                        "job": repair.job_name,
                        "stream": repair.dataset_key,
                        "task_id": str(repair.task_id),
                        "findings": list(repair.reasons),
                    }
                ),
            },
        )


def repair(rt: Runtime, reports: list[StreamReport]) -> list[PlannedRepair]:
    """Plan a repair task for every broken range in ``reports``; nothing else changes.

    Each stream's tasks land in one state transaction; the corrections are recorded after.
    """
    planned: list[PlannedRepair] = []
    for report in reports:
        spans = ranges_to_repair(report)
        if not spans:
            continue
        with rt.state() as conn, conn.transaction():
            s = next(
                x
                for x in store.list_streams(conn, rt.settings.org_id, report.job_id)
                if x.dataset_key == report.dataset_key
            )
            mine = [
                plan_repair(conn, rt.settings.org_id, s, a, b, reasons=kinds)
                for (a, b), kinds in spans.items()
            ]
        for p in mine:
            record_correction(rt, report.chain_id, p)
            log.warning(
                "integrity repair planned",
                extra={
                    "job": p.job_name,
                    "stream": p.dataset_key,
                    "range": f"{p.range_start}:{p.range_end}",
                    "task_id": str(p.task_id),
                    "new": p.created,
                },
            )
        planned += mine
    return planned
