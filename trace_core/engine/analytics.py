"""Analytics for the shell: applied analytics jobs, the work due, and one asset group computed
with its checks. The shell (``trace_dagster.analytics``) builds assets from
``analytics.catalog`` and calls these; it opens no connection itself."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trace_core.analytics import checks, compute
from trace_core.analytics.catalog import (
    ASSET_GROUPS,
    KIND_OUTPUTS,
    AssetGroup,
    family_stream,
    groups_of,
    kinds_of,
)
from trace_core.analytics.jobs import AnalyticsJob, load_analytics_jobs
from trace_core.analytics.plan import PlannedRun, plan
from trace_core.runtime import Runtime

__all__ = [
    "ASSET_GROUPS",
    "KIND_OUTPUTS",
    "AnalyticsJob",
    "AssetGroup",
    "PlannedRun",
    "analytics_jobs",
    "compute_group",
    "due_runs",
    "family_stream",
    "groups_of",
    "kinds_of",
]


def analytics_jobs(rt: Runtime) -> list[AnalyticsJob]:
    """Every applied job with an ``analytics:`` block. Raises ``TraceError`` if state is down."""
    with rt.state() as conn:
        return load_analytics_jobs(conn, rt.settings.org_id)


def due_runs(rt: Runtime) -> list[tuple[AnalyticsJob, list[PlannedRun]]]:
    """Per analytics job, the work due now (``analytics.plan``)."""
    with rt.state() as conn:
        return [
            (job, plan(conn, rt.settings.org_id, job))
            for job in load_analytics_jobs(conn, rt.settings.org_id)
        ]


def compute_group(
    rt: Runtime,
    con: Any,
    job: AnalyticsJob,
    group: AssetGroup,
    block_range: tuple[int, int] | None,
) -> tuple[compute.Result, list[tuple[str, checks.CheckOutcome]]]:
    """Compute ``group`` of ``job`` in DuckDB ``con`` (over ``block_range`` if partitioned),
    commit its outputs, and run its checks: the result and (asset, outcome) per check."""
    with rt.state() as state:
        ctx = compute.Context(rt.settings, rt.store, state)
        args: Sequence[int] = block_range or ()
        result = group.compute(ctx, con, job, *args)
        outcomes = [(c.asset, c.fn(ctx, con, job, result)) for c in group.checks]
    return result, outcomes
