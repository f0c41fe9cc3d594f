"""Analytics planning for the shell: one state connection, ``trace_core.analytics.plan``."""

from __future__ import annotations

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
