"""What analytics work is due: a pure-ish planner over the registry (no manifest reads).

Per-range work is due for every committed input range whose output for exactly those input
versions is not registered (a re-synced range has new versions, hence a new fingerprint).
A roll-up is due once no per-range work of its input is pending; its run key names the
per-range outputs it would read, so the same state never asks for the same roll-up twice.
Run keys also carry the input's registration time: Dagster keeps run keys forever, and a
Trace state rebuilt from scratch (same deterministic version ids) must not look done. A
per-range run key names the output version it is due for (its id carries the job's dataset),
so runs requested before outputs were per job do not hide the recompute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from psycopg import Connection

from trace_core.analytics import output
from trace_core.analytics.inputs import committed_versions, covered_end, registry_fingerprint
from trace_core.analytics.jobs import AnalyticsJob
from trace_core.analytics.output import OutputTarget, fingerprint
from trace_core.datasets.registry import get_version

Kind = Literal["balance_range", "staking_range", "balance_rollups", "staking_rollups"]
# Bumped when the roll-ups' outputs change (2: folding, with account_balances and
# delegator_stake), so a reused Dagster instance asks for them once more over the same input.
ROLLUP_REVISION = 2


@dataclass(frozen=True)
class PlannedRun:
    """One run to request: a per-range kind with its block range, or a roll-up kind."""

    job: str
    kind: Kind
    run_key: str
    start: int | None = None
    end: int | None = None


def _range_work(
    conn: Connection[Any],
    org_id: str,
    job: AnalyticsJob,
    kind: Kind,
    stream: str,
    last_output: str,
    salt: tuple[object, ...] = (),
) -> list[PlannedRun]:
    records = committed_versions(conn, org_id, job.chain_id, stream)
    out = []
    for rec in records:
        a, b = rec.range_start, rec.range_end
        fp = registry_fingerprint(records, a, b)
        if salt:
            fp = fingerprint(fp, *salt)
        target = OutputTarget(org_id, job.job, job.chain_id, last_output, a, b, fp, fake=rec.fake)
        if get_version(conn, target.dataset_version) is None:
            # created_at: a state rebuilt from scratch (same ids) still gets fresh run keys
            stamp = int(rec.created_at.timestamp() * 1e6)
            # the target's id: a run key from before outputs were per job (same input, same
            # stamp) must not make a reused Dagster instance skip the per-job recompute
            key = f"{job.job}:{kind}:{a}-{b}:{target.dataset_version}:{stamp}"
            out.append(PlannedRun(job.job, kind, key, a, b))
    return out


def _rollup(
    conn: Connection[Any], org_id: str, job: AnalyticsJob, kind: Kind, per_range: str
) -> list[PlannedRun]:
    records = committed_versions(conn, org_id, job.chain_id, output.dataset_key(job.job, per_range))
    end = covered_end(records, 0)
    if end == 0:
        return []
    fp = registry_fingerprint(records, 0, end)
    stamp = int(max(r.created_at for r in records).timestamp() * 1e6)
    key = f"{job.job}:{kind}:r{ROLLUP_REVISION}:0-{end}:{fp}:{stamp}"
    return [PlannedRun(job.job, kind, key, 0, end)]


def plan(conn: Connection[Any], org_id: str, job: AnalyticsJob) -> list[PlannedRun]:
    """Due runs of one job: per-range work first; a roll-up only when its input is current."""
    runs: list[PlannedRun] = []
    if job.spec.balance_diffs is not None:
        work = _range_work(
            conn,
            org_id,
            job,
            "balance_range",
            job.spec.balance_diffs,
            "supply_deltas",
            job.deltas_salt(),
        )
        runs += work or _rollup(conn, org_id, job, "balance_rollups", "supply_deltas")
    if job.spec.staking is not None:
        work = _range_work(
            conn,
            org_id,
            job,
            "staking_range",
            job.spec.staking.logs,
            "staking_events",
            job.events_salt(),
        )
        runs += work or _rollup(conn, org_id, job, "staking_rollups", "staking_events")
    return runs
