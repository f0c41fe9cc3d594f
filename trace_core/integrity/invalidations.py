"""Consume ``data.data_invalidations``: whatever was derived from invalidated blocks is
re-planned or marked stale, once per invalidation.

Invalidations come from the hot path's reorg repair (``reason = 'reorg'``: the hot rows above
the common ancestor were replaced) and from ``verify --repair`` (``'correction'``: a range is
being re-synced as a new version). Consuming one (``consume_invalidations``, each dispatcher
tick):

1. ``reorg`` / ``manual``: every committed version of the chain's datasets over the
   invalidated blocks that was registered before the invalidation was detected holds blocks of
   the abandoned fork, so each is re-synced as a new version (``repair.plan_repair``, task id
   keyed by the invalidation). A reorg at block F orphans every block above F, not only the
   ones the hot follower had seen (its old tip ends the recorded range), so for ``reorg`` the
   range is open-ended: a cold range committed past the follower's tip is re-synced too. A
   ``correction`` already has its repair task.
2. Alert events over the invalidated blocks (open-ended for ``reorg``), produced before the
   invalidation, are marked stale with the reason (``stale_at``, ``stale_reason``); a stale
   event gets no new deliveries.
3. The replacement versions' commits wake ``alert_evaluate`` like any commit (one task per
   alert and version); an event it produces again is fresh again (the sink's
   ``revalidate_alert_events``), a new one is new. So the live alert set (``stale_at IS
   NULL``) converges to the canonical chain's.
4. The invalidation is marked consumed with what was done, in the data transaction that holds
   its row lock (``FOR UPDATE SKIP LOCKED``: two dispatchers never consume the same row).

The state effects (repair tasks) commit before the data transaction; a crash between them
replays step 1 with the same task ids, which creates nothing twice.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from trace_core.chain_sync import store
from trace_core.db.queries import q
from trace_core.integrity.repair import PlannedRepair, plan_repair
from trace_core.runtime import Runtime

log = logging.getLogger(__name__)

REPLAN_REASONS = frozenset({"reorg", "manual"})
OPEN_ENDED_REASONS = frozenset({"reorg"})
DEFAULT_LIMIT = 20


@dataclass
class ConsumeReport:
    consumed: int = 0
    repairs: list[PlannedRepair] = field(default_factory=list)
    stale_events: int = 0

    @property
    def did_work(self) -> bool:
        return bool(self.consumed)


def _affected_end(inv: dict[str, Any]) -> int | None:
    """End of the affected blocks: None (unbounded) for a reorg, else the recorded end."""
    return None if inv["reason"] in OPEN_ENDED_REASONS else int(inv["range_end"])


def _plan_replacements(rt: Runtime, inv: dict[str, Any]) -> list[PlannedRepair]:
    """Repair tasks for the versions of the invalidation's org over its range (one state
    transaction)."""
    org = str(inv["org_id"])
    with rt.state() as conn, conn.transaction():
        with conn.cursor(row_factory=dict_row) as cur:
            versions = cur.execute(
                q("integrity", "versions_overlapping"),
                {
                    "org_id": uuid.UUID(str(org)),
                    "chain_id": inv["chain_id"],
                    "range_start": inv["range_start"],
                    "range_end": _affected_end(inv),
                    "detected_at": inv["detected_at"],
                },
            ).fetchall()
        if not versions:
            return []
        streams = [s for s in store.list_streams(conn, org) if s.chain_id == inv["chain_id"]]
        planned: dict[tuple[uuid.UUID, int, int], PlannedRepair] = {}
        for v in versions:
            for s in streams:
                if s.dataset_uuid != v["dataset_uuid"]:
                    continue
                span = (s.dataset_uuid, v["range_start"], v["range_end"])
                if span in planned:
                    continue
                planned[span] = plan_repair(
                    conn,
                    org,
                    s,
                    v["range_start"],
                    v["range_end"],
                    reasons=(str(inv["reason"]),),
                    key=f"invalidation:{inv['invalidation_id']}",
                )
                break  # one job's stream re-syncs a dataset shared by several jobs
    return list(planned.values())


def consume_invalidations(rt: Runtime, *, limit: int = DEFAULT_LIMIT) -> ConsumeReport:
    """Consume up to ``limit`` pending invalidations (see the module docstring)."""
    report = ConsumeReport()
    with rt.data() as data, data.transaction():
        with data.cursor(row_factory=dict_row) as cur:
            pending = cur.execute(
                q("integrity", "pending_invalidations"), {"limit": limit}
            ).fetchall()
        for inv in pending:
            # planned as the invalidation's org (its repair tasks' outbox rows are its own)
            repairs = (
                _plan_replacements(rt.for_org(inv["org_id"]), inv)
                if inv["reason"] in REPLAN_REASONS
                else []
            )
            end = _affected_end(inv)
            reason = (
                f"{inv['reason']} (invalidation {inv['invalidation_id']}): blocks "
                f"[{inv['range_start']}, {'...' if end is None else end}) were replaced"
            )
            staled = data.execute(
                q("integrity", "stale_alert_events"),
                {
                    "org_id": inv["org_id"],
                    "chain_id": inv["chain_id"],
                    "range_start": inv["range_start"],
                    "range_end": end,
                    "detected_at": inv["detected_at"],
                    "reason": reason,
                },
            ).fetchall()
            data.execute(
                q("integrity", "mark_consumed"),
                {
                    "invalidation_id": inv["invalidation_id"],
                    "consumed": Jsonb(
                        {
                            "repair_tasks": [str(r.task_id) for r in repairs],
                            "stale_events": [row[0] for row in staled],
                        }
                    ),
                },
            )
            report.consumed += 1
            report.repairs += repairs
            report.stale_events += len(staled)
            log.warning(
                "data invalidation consumed",
                extra={
                    "invalidation_id": inv["invalidation_id"],
                    "chain_id": inv["chain_id"],
                    "range": f"{inv['range_start']}:{inv['range_end']}",
                    "reason": inv["reason"],
                    "repairs": len(repairs),
                    "stale_events": len(staled),
                },
            )
    return report
