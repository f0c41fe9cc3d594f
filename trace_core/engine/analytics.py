"""Analytics for the shell: planning (``trace_core.analytics.plan``) and the assets' runs,
each call one state connection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from trace_core.analytics import Computation, checks, computations, compute, kind_outputs
from trace_core.analytics.jobs import AnalyticsJob, load_analytics_jobs
from trace_core.analytics.plan import PlannedRun, plan
from trace_core.chain_sync import epochs
from trace_core.runtime import Runtime


def due_runs(
    rt: Runtime,
) -> tuple[dict[tuple[str, str], int], list[tuple[AnalyticsJob, PlannedRun]]]:
    """Every stream's ``epoch_blocks`` (``{(job, stream): size}``) and the analytics runs due
    now, per job in order (per range first, then the roll-ups)."""
    with rt.state() as conn:
        sizes = epochs.sizes(epochs.stream_targets(conn, rt.settings.org_id))
        due = [
            (job, run)
            for job in load_analytics_jobs(conn, rt.settings.org_id)
            for run in plan(conn, rt.settings.org_id, job)
        ]
    return sizes, due


# --- the analytics assets' faces: what trace_dagster/analytics.py needs, one connection each ---

Result = compute.Result
Context = compute.Context
CheckOutcome = checks.CheckOutcome
Checker = Callable[[Context, Any, AnalyticsJob, Result], CheckOutcome]

__all__ = [
    "AnalyticsJob",
    "CheckOutcome",
    "Checker",
    "Computation",
    "Context",
    "Result",
    "applied_jobs",
    "committed_ranges",
    "computations",
    "due_runs",
    "kind_outputs",
    "run_computation",
]


def applied_jobs(rt: Runtime) -> list[AnalyticsJob]:
    """Every applied chain_sync job with an ``analytics:`` block."""
    with rt.state() as conn:
        return load_analytics_jobs(conn, rt.settings.org_id)


def committed_ranges(
    rt: Runtime, job_name: str, stream: str, start: int, end: int
) -> list[tuple[int, int]]:
    """The committed input ranges of ``stream`` inside the epoch ``[start, end)``."""
    with rt.state() as conn:
        target = epochs.stream_target(conn, rt.settings.org_id, job_name, stream)
        progress = epochs.progress_of(conn, target, start, end)
    return [(r.range_start, r.range_end) for r in progress.committed]


def run_computation(
    rt: Runtime,
    con: Any,
    job: AnalyticsJob,
    fn: Callable[..., Result],
    ranges: Sequence[tuple[int, int]] | None,
    checkers: Sequence[tuple[str, Checker]] = (),
) -> tuple[Result, list[tuple[str, CheckOutcome]]]:
    """Run one catalog computation on DuckDB connection ``con``: over each of ``ranges`` (a
    per-range asset; the last result is returned) or whole (``ranges`` None, a roll-up), then
    its checks. Raises ``TraceError`` from the computation; ``ranges`` must not be empty."""
    with rt.state() as state:
        ctx = compute.Context(rt.settings, rt.store, state)
        if ranges is None:
            result = fn(ctx, con, job)
        else:
            result = [fn(ctx, con, job, start, end) for start, end in ranges][-1]
        outcomes = [(asset, check(ctx, con, job, result)) for asset, check in checkers]
    return result, outcomes
