"""chain_sync progress as JSON-ready data: per stream cursor, range counts, percent, throughput,
ETA, observed head, eligible end and the reasons a stream is not moving.

Range counts: ``scheduled`` (planned, not leased), ``running`` (its task holds an unexpired
lease), ``retrying`` (among those, waiting to run again after a failed attempt), ``completed``
and ``dead``. Throughput is blocks of ranges completed in the last ``window_seconds`` divided by
the time since the earliest of them was planned (at most the window). Every time is the
database's ``now()``. Blocked reasons name the missing ``TRACE_RPC_POOL_<POOL>_URL`` variable,
never a URL, and the RPC methods/tracers a stream's dataset needs that the capability probe
found missing from its pool (``MissingRpcMethod``). Each stream lists its dead ranges
(``dead_ranges``: range, task, last error, attempts, when it died; the first
``DEAD_RANGES_SHOWN`` by block) until they are revived with ``trace-lite retry``. A job with a
``hot:`` block also reports its follower (``hot``: cursor, observed
head, lag, where it starts, and why it is not following); ``hot_blocked`` is the rule the
``trace_hot_follower`` sensor applies too.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

from trace_core.chain_sync import capabilities, store
from trace_core.chain_sync.head import MISSING_RPC_URL
from trace_core.chain_sync.planner import DEAD_RANGES, MISSING_HEAD, eligible_end
from trace_core.chain_sync.revive import DeadRange, dead_ranges
from trace_core.db.queries import q
from trace_core.settings import rpc_pool_env_var, rpc_pool_url

DEFAULT_WINDOW_SECONDS = 600
PAUSED = "Paused"


@dataclass(frozen=True)
class Blocked:
    kind: str
    message: str


@dataclass(frozen=True)
class StreamStatus:
    dataset_key: str
    cryo_dataset_name: str
    rpc_pool: str
    rpc_url_env: str
    dataset_uuid: str
    config_hash: str
    chunk_size: int
    max_inflight: int
    next_block: int
    scheduled: int
    running: int
    retrying: int
    completed: int
    dead: int
    inflight: int
    completed_blocks: int
    percent_done: float | None
    throughput_blocks_per_s: float | None
    eta_seconds: float | None
    observed_head: int | None
    head_age_seconds: float | None
    eligible_exclusive: int | None
    lag_blocks: int | None
    done: bool
    blocked: list[Blocked] = field(default_factory=list)
    dead_ranges: list[DeadRange] = field(default_factory=list)
    fake_ranges: int = 0  # completed ranges whose version is made-up (TRACE_CRYO_MODE=fake)

    @property
    def blocked_reason(self) -> str | None:
        """All blocked reasons as one line, or None."""
        return "; ".join(f"{b.kind}: {b.message}" for b in self.blocked) or None


@dataclass(frozen=True)
class HotStatus:
    """The hot follower of a job's chain (the cursor is per chain, shared by its jobs)."""

    rpc_pool: str
    rpc_url_env: str
    max_blocks_per_tick: int
    compact: bool
    start_block: int | None
    first_block: int | None
    cursor: int | None
    observed_head: int | None
    lag_blocks: int | None
    blocked: list[Blocked] = field(default_factory=list)

    @property
    def blocked_reason(self) -> str | None:
        """All blocked reasons as one line, or None."""
        return "; ".join(f"{b.kind}: {b.message}" for b in self.blocked) or None


def hot_blocked(job: store.HotJob, environ: Mapping[str, str] | None = None) -> list[Blocked]:
    """Why the follower does not follow ``job``'s chain for it (empty: it follows)."""
    reasons: list[Blocked] = []
    if not job.enabled:
        reasons.append(Blocked(PAUSED, f"job is paused (trace-lite resume --job {job.name})"))
    if rpc_pool_url(job.hot.rpc_pool, environ) is None:
        reasons.append(Blocked(MISSING_RPC_URL, f"{rpc_pool_env_var(job.hot.rpc_pool)} is not set"))
    if job.hot_cursor is None and job.start_block is None:
        reasons.append(
            Blocked(
                MISSING_HEAD,
                "no head observation yet; the follower starts at max(from_block, head + 1 - tail_lag)",
            )
        )
    return reasons


def hot_status(job: store.HotJob, environ: Mapping[str, str] | None = None) -> HotStatus:
    """The follower part of a job's status (``environ`` defaults to the process environment)."""
    return HotStatus(
        rpc_pool=job.hot.rpc_pool,
        rpc_url_env=rpc_pool_env_var(job.hot.rpc_pool),
        max_blocks_per_tick=job.hot.max_blocks_per_tick,
        compact=job.compact,
        start_block=job.start_block,
        first_block=job.hot_first_block,
        cursor=job.hot_cursor,
        observed_head=job.observed_head,
        lag_blocks=job.lag_blocks,
        blocked=hot_blocked(job, environ),
    )


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    org_id: str
    name: str
    chain_id: int
    mode: str
    enabled: bool
    from_block: int
    to_block: int | None
    tail_lag: int | None
    head_poll_interval_seconds: int | None
    max_head_age_seconds: int | None
    finality_depth: int | None
    max_attempts: int | None
    source_file: str | None
    last_error_kind: str | None
    last_error_message: str | None
    updated_at: str
    done: bool
    streams: list[StreamStatus]
    hot: HotStatus | None = None

    def as_json(self, queue: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A JSON-ready dict (streams and hot carry ``blocked_reason`` too); ``queue`` is
        attached as is."""
        out = dataclasses.asdict(self)
        for s_out, s in zip(out["streams"], self.streams, strict=True):
            s_out["blocked_reason"] = s.blocked_reason
        if self.hot is not None:
            out["hot"]["blocked_reason"] = self.hot.blocked_reason
        if queue is not None:
            out["queue"] = dict(queue)
        return out


def job_status(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    job: str | uuid.UUID | None = None,
    *,
    queue: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    window_seconds: int = DEFAULT_WINDOW_SECONDS,
) -> list[dict[str, Any]]:
    """Status of one job (by name or id) or of every job in the org (most recently updated
    first), as JSON-ready dicts. ``queue`` (queue-level numbers) is attached to each job.

    Raises ``ChainSyncJobNotFound`` for an unknown job.
    """
    return [
        s.as_json(queue)
        for s in collect_status(conn, org_id, job, environ=environ, window_seconds=window_seconds)
    ]


def collect_status(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    job: str | uuid.UUID | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    window_seconds: int = DEFAULT_WINDOW_SECONDS,
) -> list[JobStatus]:
    """Like ``job_status`` but as dataclasses."""
    jobs = [store.get_job(conn, org_id, job)] if job is not None else store.list_jobs(conn, org_id)
    hot = {h.job_id: hot_status(h, environ) for h in store.list_hot_jobs(conn, org_id, job)}
    missing = capabilities.missing_capabilities(conn, org_id)
    out: list[JobStatus] = []
    with conn.cursor(row_factory=dict_row) as cur:
        for j in jobs:
            rows = cur.execute(
                q("chain_sync", "status_streams"),
                {"job_id": j.job_id, "window_seconds": float(window_seconds)},
            ).fetchall()
            dead = dead_ranges(conn, j.job_id) if any(r["dead"] for r in rows) else {}
            streams = [
                _stream_status(
                    j,
                    r,
                    environ,
                    dead.get(r["dataset_key"], []),
                    missing.get((j.chain_id, r["rpc_pool"])),
                )
                for r in rows
            ]
            out.append(_job_status(j, streams, hot.get(j.job_id)))
    return out


def _job_status(
    j: store.JobRow, streams: list[StreamStatus], hot: HotStatus | None = None
) -> JobStatus:
    return JobStatus(
        job_id=str(j.job_id),
        org_id=str(j.org_id),
        name=j.name,
        chain_id=j.chain_id,
        mode=j.mode,
        enabled=j.enabled,
        from_block=j.from_block,
        to_block=j.to_block,
        tail_lag=j.tail_lag,
        head_poll_interval_seconds=j.head_poll_interval_seconds,
        max_head_age_seconds=j.max_head_age_seconds,
        finality_depth=j.finality_depth,
        max_attempts=j.max_attempts,
        source_file=j.source_file,
        last_error_kind=j.last_error_kind,
        last_error_message=j.last_error_message,
        updated_at=_iso(j.updated_at),
        done=bool(streams) and all(s.done for s in streams),
        streams=streams,
        hot=hot,
    )


def _iso(value: datetime) -> str:
    return value.isoformat()


def _stream_status(
    j: store.JobRow,
    r: dict[str, Any],
    environ: Mapping[str, str] | None,
    dead: list[DeadRange] | None = None,
    missing: Mapping[str, str | None] | None = None,
) -> StreamStatus:
    fixed = j.mode == "fixed_target"
    pool = r["rpc_pool"]
    elig = eligible_end(
        mode=j.mode,
        from_block=j.from_block,
        to_block=j.to_block,
        tail_lag=j.tail_lag,
        max_head_age_seconds=j.max_head_age_seconds,
        head_block=r["head_block"],
        head_age_seconds=r["head_age_seconds"],
    )
    completed_blocks = int(r["completed_blocks"])
    span = r["recent_span_seconds"]
    recent = int(r["recent_blocks"])
    throughput = recent / span if recent > 0 and span and span > 0 else None
    percent = eta = None
    if fixed:
        assert j.to_block is not None
        total = j.to_block - j.from_block
        remaining = max(0, total - completed_blocks)
        percent = round(100.0 * (total - remaining) / total, 2)
        eta = 0.0 if remaining == 0 else (remaining / throughput if throughput else None)
    inflight = int(r["scheduled"]) + int(r["running"])
    done = fixed and r["next_block"] >= (j.to_block or 0) and inflight == 0 and r["dead"] == 0
    dead = dead or []
    blocked = (
        []
        if done
        else _blocked(j, r, elig.blocked_kind, elig.blocked_message, environ, dead, missing)
    )
    return StreamStatus(
        dataset_key=r["dataset_key"],
        cryo_dataset_name=r["cryo_dataset_name"],
        rpc_pool=pool,
        rpc_url_env=rpc_pool_env_var(pool),
        dataset_uuid=str(r["dataset_uuid"]),
        config_hash=r["config_hash"],
        chunk_size=r["chunk_size"],
        max_inflight=r["max_inflight"],
        next_block=r["next_block"],
        scheduled=int(r["scheduled"]),
        running=int(r["running"]),
        retrying=int(r["retrying"]),
        completed=int(r["completed"]),
        dead=int(r["dead"]),
        inflight=inflight,
        completed_blocks=completed_blocks,
        percent_done=percent,
        throughput_blocks_per_s=None if throughput is None else round(throughput, 3),
        eta_seconds=None if eta is None else round(eta, 1),
        observed_head=r["head_block"],
        head_age_seconds=None if r["head_age_seconds"] is None else round(r["head_age_seconds"], 1),
        eligible_exclusive=elig.end,
        lag_blocks=None if fixed or elig.end is None else max(0, elig.end - r["next_block"]),
        done=done,
        blocked=blocked,
        dead_ranges=dead,
        fake_ranges=int(r["fake_ranges"]),
    )


def _short(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _blocked(
    j: store.JobRow,
    r: dict[str, Any],
    head_kind: str | None,
    head_message: str | None,
    environ: Mapping[str, str] | None,
    dead: list[DeadRange],
    missing: Mapping[str, str | None] | None = None,
) -> list[Blocked]:
    reasons: list[Blocked] = []
    if not j.enabled:
        reasons.append(Blocked(PAUSED, f"job is paused (trace-lite resume --job {j.name})"))
    env = rpc_pool_env_var(r["rpc_pool"])
    if rpc_pool_url(r["rpc_pool"], environ) is None:
        reasons.append(Blocked(MISSING_RPC_URL, f"{env} is not set"))
    lacking = capabilities.blocked_reason(
        r["cryo_dataset_name"], r["rpc_pool"], j.chain_id, missing
    )
    if lacking is not None:
        reasons.append(Blocked(capabilities.MISSING_RPC_METHOD, lacking))
    if head_kind is not None and head_message is not None:
        reasons.append(Blocked(head_kind, head_message))
    observer_kind = r["head_error_kind"]
    if j.mode == "follow_head" and observer_kind and observer_kind not in {b.kind for b in reasons}:
        reasons.append(Blocked(observer_kind, r["head_error_message"] or ""))
    if r["dead"]:
        first = dead[0] if dead else None
        error = f" ({_short(first.last_error)})" if first and first.last_error else ""
        reasons.append(
            Blocked(
                DEAD_RANGES,
                f"{r['dead']} dead range(s), first [{r['first_dead_start']}, {r['first_dead_end']}) "
                f"task {r['first_dead_task']}{error}; planning stopped until revived "
                f"(trace-lite retry --job {j.name} --stream {r['dataset_key']})",
            )
        )
    return reasons
