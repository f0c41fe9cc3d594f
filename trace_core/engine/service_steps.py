"""The bounded steps of the four services (hot follower, hot compactor, sink drain, alert
delivery) and their ``ServiceSpec``s; ``services.serve`` loops one under its lease and
trace_dagster runs that loop as a Dagster run (docs/hot_path.md, docs/architecture.md).

``follower_step`` runs one bounded ``follow_pool`` step per (org, chain) an enabled
chain_sync job follows (its ``hot:`` block), for every org, and records the head it saw;
``compactor_step`` runs ``compact_chain`` for the (org, chain) pairs whose jobs compact,
deleting compacted hot rows only after their cold versions are committed, and reports
committed ranges as an observation of asset ``hot/chain_<id>`` (metadata names the org).
Each org's hot rows are its own (its job's RPC), so two orgs on one chain are two followers.
A retryable failure of one pair is reported and retried next step; a fatal one fails the
step (and the run, which Dagster retries) after the other pairs had their turn.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from trace_core.alerts.delivery import deliver_once
from trace_core.chain_sync.head import record_head_observation
from trace_core.chain_sync.status import hot_blocked
from trace_core.chain_sync.store import HotJob, list_hot_jobs
from trace_core.engine.services import Observation, ServiceSpec, StepReport
from trace_core.errors import RetryableError, TraceError
from trace_core.hot.compact import compact_chain
from trace_core.hot.follower import FollowResult, follow_pool
from trace_core.hot.prune import prune_served
from trace_core.runtime import Runtime
from trace_core.sinks.consumer import SinkReport, sink_once

# The follower's step runs inside its service run, so it can poll the tip more often than a
# sensor could (the old sensor ran every 3 s at best, after the daemon's own loop).
FOLLOWER_INTERVAL_SECONDS = 1.0
COMPACTOR_INTERVAL_SECONDS = 30
# No chain is started past this point of a step; the step's cursor rotates the starting
# chain so a slow chain cannot starve the others.
HOT_STEP_BUDGET_SECONDS = 40.0
HEAD_SOURCE = "hot_follower"


def hot_asset_path(chain_id: int) -> tuple[str, ...]:
    """``hot/chain_<id>``: the asset the compactor's observations are reported on."""
    return ("hot", f"chain_{chain_id}")


HotKey = tuple[int, str]  # (chain_id, org_id): one follower and one compaction each


def _hot_jobs(rt: Runtime) -> dict[HotKey, list[HotJob]]:
    """Every org's enabled jobs with a ``hot:`` block, by (chain, org): an org's jobs on one
    chain share its follower; another org's jobs on that chain have their own."""
    with rt.state() as conn:
        jobs = list_hot_jobs(conn, None, enabled_only=True)
    by_key: dict[HotKey, list[HotJob]] = {}
    for job in jobs:
        by_key.setdefault((job.chain_id, str(job.org_id)), []).append(job)
    return by_key


def _cursor(key: HotKey) -> str:
    return f"{key[0]}:{key[1]}"


def _rotated(keys: list[HotKey], cursor: str | None) -> list[HotKey]:
    """``keys`` (sorted) starting after the (chain, org) the previous tick handled last."""
    chain, _, org = (cursor or "").partition(":")
    if not chain.isdigit():
        return keys
    last = (int(chain), org)
    return [k for k in keys if k > last] + [k for k in keys if k <= last]


def _where(key: HotKey, rt: Runtime) -> str:
    """``chain 1`` for the deployment's org, ``chain 1 (org 0000abcd)`` for another."""
    chain_id, org = key
    return (
        f"chain {chain_id}"
        if org == str(rt.settings.org_id)
        else f"chain {chain_id} (org {org[:8]})"
    )


class _Failures:
    """Per-chain failures of one tick: retryable ones become a line, fatal ones are kept."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.lines: list[str] = []
        self.fatal: TraceError | None = None

    @contextmanager
    def guard(self, where: str, what: str) -> Iterator[None]:
        try:
            yield
        except RetryableError as exc:
            self.log.warning(f"{what} on {where}: {exc.code}: {exc.message}")
            self.lines.append(f"{where}: {exc.code}: {exc.message} (next tick retries)")
        except TraceError as exc:
            self.log.error(f"{what} on {where} failed: {exc.code}: {exc.message}")
            self.lines.append(f"{where}: {exc.code}: {exc.message}")
            self.fatal = self.fatal or exc

    def raise_fatal(self) -> None:
        if self.fatal is not None:
            raise self.fatal


def _follow_line(where: str, job: HotJob, r: FollowResult) -> str:
    if r.skipped:
        return f"{where}: another follower step holds the chain"
    line = f"{where} (job {job.name}): +{r.ingested} blocks, cursor {r.cursor}, head {r.head}"
    if r.reorged_depth:
        line += f", repaired a reorg of depth {r.reorged_depth}"
    return line


def follower_step(rt: Runtime, cursor: str | None, log: logging.Logger) -> StepReport:
    """One follower step per followed (org, chain), each bounded by its job's
    ``max_blocks_per_tick``.

    A chain whose jobs are all blocked (paused, ``TRACE_RPC_POOL_<POOL>_URL`` unset, no head
    observed yet for follow_head) is skipped with the reason; ``trace-lite status`` shows the
    same reasons (``chain_sync.status.hot_blocked``). The report summarises each chain; it
    did work when a chain was followed, and its cursor rotates the starting chain. Raises the
    first fatal error (``ChainMismatch``, ``ReorgTooDeep``) after every chain had its turn.
    """
    by_key = _hot_jobs(rt)
    if not by_key:
        return StepReport(False, "no enabled chain_sync job has a hot: block")
    deadline = time.monotonic() + HOT_STEP_BUDGET_SECONDS
    failures = _Failures(log)
    lines: list[str] = []
    last: HotKey | None = None
    followed = 0
    for key in _rotated(sorted(by_key), cursor):
        chain_id, org = key
        where = _where(key, rt)
        if time.monotonic() > deadline:
            lines.append(f"{where}: deferred to the next tick")
            continue
        last = key
        jobs = by_key[key]
        runnable = [j for j in jobs if not hot_blocked(j)]
        if not runnable:
            reasons = "; ".join(f"{b.kind}: {b.message}" for b in hot_blocked(jobs[0]))
            lines.append(f"{where} (job {jobs[0].name}): blocked: {reasons}")
            continue
        job = runnable[0]
        followed += 1
        with failures.guard(where, "hot follower"):
            result = follow_pool(
                rt,
                chain_id,
                job.hot.rpc_pool,
                max_blocks=job.hot.max_blocks_per_tick,
                start_block=job.start_block,
                org_id=org,
            )
            if result.head is not None and not result.skipped:
                with rt.state() as conn:
                    record_head_observation(
                        conn,
                        org_id=org,
                        chain_id=chain_id,
                        rpc_pool=job.hot.rpc_pool,
                        head_block=result.head,
                        source=HEAD_SOURCE,
                    )
            lines.append(_follow_line(where, job, result))
    failures.raise_fatal()
    summary = " | ".join(lines + failures.lines)
    return StepReport(followed > 0, summary, cursor=None if last is None else _cursor(last))


def compactor_step(rt: Runtime, cursor: str | None, log: logging.Logger) -> StepReport:
    """``compact_chain(..., delete_hot=True)`` for every hot (org, chain) whose enabled jobs all
    compact; ``prune_served`` for the other hot (org, chain) pairs (follow_head: chain_sync's
    ranges go cold). Each org's hot rows become its own datasets' versions.

    Reports an observation of ``hot/chain_<id>`` for each pair where ranges were committed
    or hot rows deleted. Raises the first fatal error after every pair had its turn.
    """
    hot_jobs = _hot_jobs(rt)
    compacted = sorted(k for k, jobs in hot_jobs.items() if all(j.compact for j in jobs))
    pruned = sorted(set(hot_jobs) - set(compacted))
    if not hot_jobs:
        return StepReport(False, "no enabled chain_sync job follows a hot chain")
    deadline = time.monotonic() + HOT_STEP_BUDGET_SECONDS
    failures = _Failures(log)
    events: list[Observation] = []
    lines: list[str] = []
    for key in pruned:
        chain_id, org = key
        where = _where(key, rt)
        # chain_sync's own ranges become cold behind the tip: drop the hot rows they serve
        with failures.guard(where, "hot pruning"):
            deleted_rows = prune_served(rt.settings, rt.dbs, chain_id, org_id=org)
            lines.append(f"{where}: {sum(deleted_rows.values())} hot rows served by cold pruned")
            if any(deleted_rows.values()):
                events.append(
                    Observation(
                        hot_asset_path(chain_id),
                        {
                            "chain_id": chain_id,
                            "org_id": org,
                            "pruned_hot_rows": dict(deleted_rows),
                        },
                    )
                )
    for key in compacted:
        chain_id, org = key
        where = _where(key, rt)
        if time.monotonic() > deadline:
            break
        with failures.guard(where, "hot compaction"):
            result = compact_chain(rt, chain_id, delete_hot=True, org_id=org)
            new = [c for c in result.committed if c.newly_registered]
            deleted = sum(result.deleted_rows.values())
            lines.append(
                f"{where}: {len(new)} range(s) committed, {deleted} hot rows deleted, "
                f"final below {result.final_end}"
            )
            if new or deleted:
                metadata: dict[str, Any] = {
                    "chain_id": chain_id,
                    "org_id": org,
                    "final_end": result.final_end,
                    "committed": [
                        f"{c.dataset_key} [{c.range_start}, {c.range_end}) rows={c.row_count}"
                        for c in new
                    ],
                    "deleted_hot_rows": dict(result.deleted_rows),
                }
                events.append(Observation(hot_asset_path(chain_id), metadata))
    failures.raise_fatal()
    return StepReport(
        bool(events), " | ".join(lines + failures.lines) or "nothing final to compact", events
    )


FOLLOWER = ServiceSpec(
    name="hot_follower",
    step=follower_step,
    interval_seconds=FOLLOWER_INTERVAL_SECONDS,
    description="Follows the tip of every chain a chain_sync job's hot: block names into the hot tables",
)
COMPACTOR = ServiceSpec(
    name="hot_compactor",
    step=compactor_step,
    interval_seconds=COMPACTOR_INTERVAL_SECONDS,
    description="Compacts final hot ranges into cold dataset versions, then deletes those hot rows",
)

SINK_INTERVAL_SECONDS = 1.0

MESSAGES_PER_CALL = 10
SINK_MAX_CALLS_PER_STEP = 20
SINK_STEP_BUDGET_SECONDS = 20.0  # one step's budget


def sink_drain(
    rt: Runtime,
    *,
    max_calls: int = SINK_MAX_CALLS_PER_STEP,
    budget_seconds: float = SINK_STEP_BUDGET_SECONDS,
) -> list[SinkReport]:
    """Call ``sink_once`` until the buffer queue is idle, ``max_calls`` or the time budget."""
    reports: list[SinkReport] = []
    deadline = time.monotonic() + budget_seconds
    for _ in range(max_calls):
        report = sink_once(rt, max_messages=MESSAGES_PER_CALL)
        if report.idle:
            break
        reports.append(report)
        if time.monotonic() > deadline:
            break
    return reports


def sink_step(rt: Runtime, cursor: str | None, log: logging.Logger) -> StepReport:
    """Drain the buffer queue (bounded, see ``sink_drain``) and say what was written."""
    reports = sink_drain(rt)
    if not reports:
        return StepReport(False, "buffer queue is empty")
    for report in reports:
        for error in report.errors:
            log.warning(f"sink: message failed: {error}")
    return StepReport(
        True,
        f"{sum(r.received for r in reports)} message(s), {sum(r.acked for r in reports)} "
        f"written, {sum(r.rows_inserted for r in reports)} row(s) new, "
        f"{sum(r.rows_duplicate for r in reports)} duplicate",
    )


SINK = ServiceSpec(
    name="sink",
    step=sink_step,
    interval_seconds=SINK_INTERVAL_SECONDS,
    description="Writes buffered batches (buffer queue pointers) into Postgres data",
    exit_when_idle=True,
)

DELIVERY_INTERVAL_SECONDS = 1.0

# Each delivery waits at most its channel's timeout (<= 30 s) and sends run in parallel, so
# one bounded step takes at most about that long.
DELIVERY_EVENTS_PER_STEP = 50

# The asset alert delivery observations are reported on (data.alert_events).
ALERT_EVENTS_PATH: tuple[str, ...] = ("alerts", "alert_events")


def delivery_step(rt: Runtime, cursor: str | None, log: logging.Logger) -> StepReport:
    """One bounded delivery step; an observation of ``alerts/alert_events`` when it worked."""
    report = deliver_once(rt, max_events=DELIVERY_EVENTS_PER_STEP)
    if not report.did_work:
        return StepReport(False, "no alert deliveries due")
    metadata = {
        "planned": report.planned,
        "attempted": report.attempted,
        "delivered": report.delivered,
        "retried": report.retried,
        "failed": report.failed,
        "rate_limited": report.rate_limited,
    }
    return StepReport(
        True,
        f"alert delivery: {report.summary()}",
        [Observation(ALERT_EVENTS_PATH, metadata)],
    )


ALERT_DELIVERY = ServiceSpec(
    name="alert_delivery",
    step=delivery_step,
    interval_seconds=DELIVERY_INTERVAL_SECONDS,
    description="Delivers new alert events to their channels (webhook, Slack, PagerDuty, email, SMS, log), with retries and rate limits",
    exit_when_idle=True,
)

SERVICE_SPECS: tuple[ServiceSpec, ...] = (FOLLOWER, COMPACTOR, SINK, ALERT_DELIVERY)
