"""One dispatcher tick: observe heads, plan ranges, reap leases, drain the outbox.

Each step is bounded so a tick stays well inside a Dagster sensor's time budget. The
Dagster dispatcher sensor and ``trace-lite run`` both call ``dispatch_tick``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trace_core import outbox
from trace_core.engine import orgs
from trace_core.runtime import Runtime
from trace_core.tasks import lifecycle

log = logging.getLogger(__name__)

ALERT_SCHEDULES_PER_TICK = 50  # due alert schedules turned into evaluations per tick, all orgs


@dataclass(frozen=True)
class PlannedPartition:
    """A partition of a stream's asset: the epoch (``chain_sync.epochs``) of planned ranges."""

    job_name: str
    dataset_key: str
    partition_key: str
    prefix: str | None = None  # the org's asset-key prefix (None: the deployment's org)


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
    """One tick for every org with enabled work (``engine.orgs``): each org's heads,
    capabilities, planning and alert schedules run with the session acting for that org, the
    tick's planning budget (``TRACE_DISPATCH_TICK_RANGES``) shared between them
    (``plan_orgs``); one org's failure is logged and the others still served. Reaping, the
    invalidations, the outbox and event routing are cross-org by nature."""
    from trace_core.alerts import routing
    from trace_core.chain_sync import capabilities, head
    from trace_core.integrity.invalidations import consume_invalidations

    report = TickReport()
    s = rt.settings
    with rt.state() as conn:
        work = orgs.orgs_with_work(conn)

        def observe(org: orgs.OrgRef) -> int:
            with orgs.acting_for(conn, org.org_id, s.org_id):
                polls = len(head.observe_heads(conn, org.org_id))
                capabilities.probe_due(conn, org.org_id, s)  # once per pool and TTL
            return polls

        report.heads_observed = sum(n for _, n in orgs.each_org(work, "observe heads", observe))
        planned = orgs.plan_orgs(rt, conn, work)
        epochs = {
            (p.job_name, p.dataset_key, k, orgs.key_prefix(rt, org))
            for org, p in planned
            for k in p.epoch_keys
        }
        report.planned = [PlannedPartition(*e) for e in sorted(epochs, key=str)]
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
        share = orgs.fair_shares(ALERT_SCHEDULES_PER_TICK, len(work))

        def schedule(org: orgs.OrgRef) -> int:
            with orgs.acting_for(conn, org.org_id, s.org_id):
                return routing.schedule_due_alerts(
                    conn, org.org_id, max_attempts=s.max_attempts, limit=share
                )

        report.evaluations += sum(n for _, n in orgs.each_org(work, "alert schedules", schedule))
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
