"""The orgs the engine serves: which have work, acting for one, and their shell-facing prefix.

The system's connections bypass row-level security and see every org's rows; what they write
is stamped with the session's ``trace.org_id`` unless a parent row's org wins (state migration
0032's triggers). So cross-org work (the dispatcher tick, a worker run's takes) runs each org's
steps with the session acting for that org (``acting_for``), and a task's attempt runs on the
runtime of its task's org (``Runtime.for_org``). One org's failure is logged and the next org
served (``each_org``): a bad RPC or a broken job of one org never stops another's.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from psycopg import Connection

from trace_core.chain_sync import planner
from trace_core.errors import TraceError
from trace_core.runtime import Runtime
from trace_core.tenancy.acting import (
    OrgRef,
    act_in_transaction,
    acting_for,
    dataset_org,
    orgs_with_work,
)
from trace_core.tenancy.orgs import org_by_id

log = logging.getLogger(__name__)

__all__ = [
    "OrgRef",
    "act_in_transaction",
    "acting_for",
    "dataset_org",
    "each_org",
    "fair_shares",
    "key_prefix",
    "list_work_orgs",
    "orgs_with_work",
    "plan_orgs",
    "plan_streams",
    "runtime_prefix",
    "work_runtimes",
]

T = TypeVar("T")
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def list_work_orgs(rt: Runtime, *, enabled_only: bool = True) -> list[OrgRef]:
    with rt.state() as conn:
        return orgs_with_work(conn, enabled_only=enabled_only)


def each_org(orgs: list[OrgRef], step: str, fn: Callable[[OrgRef], T]) -> list[tuple[OrgRef, T]]:
    """``fn`` for each org in turn; an org whose step raises a ``TraceError`` is logged (with
    the org and the step) and skipped, so the others are still served."""
    out: list[tuple[OrgRef, T]] = []
    for org in orgs:
        try:
            out.append((org, fn(org)))
        except TraceError as exc:
            log.warning(
                "%s failed for org %s: %s",
                step,
                org.name,
                exc,
                extra={"org_id": str(org.org_id), "org": org.name, "step": step},
            )
    return out


def fair_shares(total: int, orgs: int) -> int:
    """Each org's share of a tick's ``total`` budget (at least 1): the budget is shared, so
    more orgs never multiply a tick's work beyond ``max(total, orgs)``."""
    return max(1, total // max(1, orgs))


def plan_orgs(
    rt: Runtime, conn: Connection[Any], work: list[OrgRef]
) -> list[tuple[OrgRef, planner.PlannedRange]]:
    """Plan every org's streams within ``TRACE_DISPATCH_TICK_RANGES`` ranges: each org gets an
    equal share first (in name order), then what the others left is shared again between the
    orgs that used theirs up. Each org plans with the session acting for it (its outbox rows
    are its own); an org whose planning fails is logged and skipped."""
    s = rt.settings
    budget = s.dispatch_tick_ranges
    planned: list[tuple[OrgRef, planner.PlannedRange]] = []
    pool_check = planner.pool_url_check(s)
    hungry = work
    for _pass in range(2):
        if budget <= 0 or not hungry:
            break
        share = fair_shares(budget, len(hungry))

        def plan(org: OrgRef, share: int = share) -> list[planner.PlannedRange]:
            with acting_for(conn, org.org_id, s.org_id):
                return planner.plan_tick(
                    conn,
                    org_id=org.org_id,
                    limit=s.dispatch_batch_size,
                    total_limit=share,
                    pool_check=pool_check,
                ).planned

        done = each_org(hungry, "plan", plan)
        for org, got in done:
            planned += [(org, p) for p in got]
            budget -= len(got)
        hungry = [org for org, got in done if len(got) >= share]
    return planned


def plan_streams(
    rt: Runtime, conn: Connection[Any], streams: Collection[tuple[str, str, str]]
) -> list[tuple[OrgRef, planner.PlannedRange]]:
    """Plan only ``streams`` (org id, job id, dataset key): those whose ranges just ended, the
    only ones a worker run's take can have freed room in (``max_inflight``). Everything else
    that makes room (a new job, a head that moved, a resumed stream) reaches the dispatcher's
    tick, which plans every stream (``plan_orgs``) and records blocked jobs."""
    s = rt.settings
    pool_check = planner.pool_url_check(s)
    by_org: dict[str, list[tuple[str, str]]] = {}
    for org_id, job_id, dataset_key in sorted(set(streams)):
        by_org.setdefault(org_id, []).append((job_id, dataset_key))
    work = [org for org in orgs_with_work(conn) if str(org.org_id) in by_org]

    def plan(org: OrgRef) -> list[planner.PlannedRange]:
        plans = []
        with acting_for(conn, org.org_id, s.org_id):
            for job_id, dataset_key in by_org[str(org.org_id)]:
                plan = planner.plan_stream(
                    conn,
                    uuid.UUID(job_id),
                    dataset_key,
                    limit=s.dispatch_batch_size,
                    pool_check=pool_check,
                )
                if plan is not None:
                    plans.append(plan)
        return planner.PlanResult(tuple(plans)).planned

    return [(org, p) for org, got in each_org(work, "plan", plan) for p in got]


def key_prefix(rt: Runtime, org: OrgRef | None) -> str | None:
    """The prefix of an org's Dagster asset keys and partition names: ``None`` for the
    deployment's own org (``TRACE_ORG_ID``: existing keys and partitions stay as they were),
    else ``org_<name>`` (org names are unique; jobs of different orgs may share a name)."""
    if org is None or str(org.org_id) == rt.home_org_id:
        return None
    return "org_" + _UNSAFE.sub("_", org.name)


def runtime_prefix(rt: Runtime) -> str | None:
    """``key_prefix`` of the org ``rt`` acts for (``Runtime.for_org``); names cached on the
    runtime (``Runtime.org_names``)."""
    org = str(rt.settings.org_id)
    if org == rt.home_org_id:
        return None
    name = rt.org_names.get(org)
    if name is None:
        with rt.state() as conn:
            name = rt.org_names[org] = org_by_id(conn, org).name
    return key_prefix(rt, OrgRef(uuid.UUID(org), name))


def work_runtimes(rt: Runtime, *, enabled_only: bool = False) -> list[Runtime]:
    """A runtime per org with (enabled) work, the deployment's own org first and always."""
    home = rt.for_org(rt.home_org_id)
    out = [home]
    for org in list_work_orgs(rt, enabled_only=enabled_only):
        if str(org.org_id) != rt.home_org_id:
            rt.org_names[str(org.org_id)] = org.name
            out.append(home.for_org(org.org_id))
    return out
