"""One dispatcher tick: observe heads, plan ranges, reap leases, drain the outbox.

Each step is bounded so a tick stays well inside a Dagster sensor's time budget. The
Dagster dispatcher sensor and ``trace-lite run`` both call ``dispatch_tick``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trace_core import outbox
from trace_core.runtime import Runtime
from trace_core.tasks import lifecycle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedPartition:
    """A partition of a stream's asset: the epoch (``chain_sync.epochs``) of planned ranges."""

    job_name: str
    dataset_key: str
    partition_key: str


@dataclass
class TickReport:
    planned: list[PlannedPartition] = field(default_factory=list)  # epochs of planned ranges
    published: int = 0
    retried: int = 0
    dead: int = 0
    rewoken: int = 0
    heads_observed: int = 0
    evaluations: int = 0
    invalidations: int = 0  # data invalidations consumed (trace_core.integrity.invalidations)

    @property
    def did_work(self) -> bool:
        return bool(
            self.planned
            or self.published
            or self.retried
            or self.dead
            or self.rewoken
            or self.evaluations
            or self.invalidations
        )

    def summary(self) -> str:
        return (
            f"planned={len(self.planned)} published={self.published} retried={self.retried} "
            f"dead={self.dead} rewoken={self.rewoken} heads={self.heads_observed} "
            f"evaluations={self.evaluations} invalidations={self.invalidations}"
        )


def dispatch_tick(rt: Runtime) -> TickReport:
    from trace_core.alerts import routing
    from trace_core.chain_sync import capabilities, head, planner
    from trace_core.integrity.invalidations import consume_invalidations

    report = TickReport()
    s = rt.settings
    with rt.state() as conn:
        report.heads_observed = len(head.observe_heads(conn, s.org_id))
        capabilities.probe_due(conn, s.org_id, s)  # once per pool and TTL: what it serves
        result = planner.plan_tick(
            conn, org_id=s.org_id, limit=s.dispatch_batch_size, pool_check=planner.pool_url_check(s)
        )
        epochs = {(p.job_name, p.dataset_key, k) for p in result.planned for k in p.epoch_keys}
        report.planned = [PlannedPartition(*e) for e in sorted(epochs)]
        with conn.transaction():
            reaped = lifecycle.reap(
                conn, policy=rt.retry_policy, rewake_after_seconds=s.rewake_after_seconds
            )
        report.retried, report.dead, report.rewoken = reaped.retried, reaped.dead, reaped.rewoken
        # reorgs and repairs: re-plan what was derived from the replaced blocks (outbox rows)
        report.invalidations = consume_invalidations(rt).consumed
        report.published = outbox.drain_all(conn, rt.queue, batch_size=s.outbox_batch_size)
        # downstream wake-ups: route the dataset events just published, then publish the
        # evaluation tasks they (and due alert schedules) created
        report.evaluations = routing.route_dataset_events(rt)
        report.evaluations += routing.schedule_due_alerts(
            conn, s.org_id, max_attempts=s.max_attempts
        )
        if report.evaluations:
            report.published += outbox.drain_all(conn, rt.queue, batch_size=s.outbox_batch_size)
    if report.did_work:
        log.info("dispatcher tick", extra={"summary": report.summary()})
    return report


def reap_expired(rt: Runtime) -> lifecycle.ReapResult:
    """The recovery part of a tick alone: expired leases back to the queue (re-woken at once),
    queued tasks nobody claimed re-woken, and their wake-ups published. ``trace-lite run`` does
    this while it executes a run in process, when no tick can."""
    s = rt.settings
    with rt.state() as conn:
        with conn.transaction():
            reaped = lifecycle.reap(
                conn, policy=rt.retry_policy, rewake_after_seconds=s.rewake_after_seconds
            )
        if reaped.retried or reaped.rewoken:
            outbox.drain_all(conn, rt.queue, batch_size=s.outbox_batch_size)
    return reaped
