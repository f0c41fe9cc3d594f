"""Job progress as the Dagster UI shows it: per stream percent done, ETA, dead ranges and why
it is not moving (``chain_sync.status``, the numbers ``trace-lite status`` prints), folded into
one line per job for a sensor tick's message and into asset metadata."""

from __future__ import annotations

from dataclasses import dataclass

from trace_core.chain_sync.status import collect_status
from trace_core.engine import orgs
from trace_core.runtime import Runtime


@dataclass(frozen=True)
class StreamProgress:
    """One stream of one job: ranges done, percent (fixed_target only), ETA, lag, blocked."""

    job_name: str
    dataset_key: str
    completed: int
    inflight: int
    dead: int
    percent_done: float | None
    eta_seconds: float | None
    throughput_blocks_per_s: float | None
    lag_blocks: int | None
    done: bool
    blocked_reason: str | None
    enabled: bool

    def line(self) -> str:
        """``blocks 42.0% (84 ranges done, 6 running), ETA 2m10s, 3 dead; blocked: ...``."""
        parts = [self.dataset_key]
        if self.done:
            parts.append("done")
        elif self.percent_done is not None:
            parts.append(f"{self.percent_done:.1f}%")
        elif self.lag_blocks is not None:
            parts.append(f"{self.lag_blocks} blocks behind")
        head = " ".join(parts) + f" ({self.completed} ranges done, {self.inflight} in flight)"
        if not self.enabled:
            head += ", paused"
        elif not self.done:
            head += ", ETA " + (eta_text(self.eta_seconds) if self.eta_seconds else "unknown")
        if self.dead:
            head += f", {self.dead} dead"
        if self.blocked_reason:
            head += f"; blocked: {self.blocked_reason}"
        return head


def eta_text(seconds: float | None) -> str:
    """``1h02m``, ``3m10s``, ``42s`` (``unknown`` for None)."""
    if seconds is None:
        return "unknown"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def stream_progress(rt: Runtime) -> list[StreamProgress]:
    """Every applied stream's progress (jobs most recently updated first)."""
    with rt.state() as conn:
        jobs = collect_status(conn, rt.settings.org_id)
    return [
        StreamProgress(
            job_name=j.name,
            dataset_key=s.dataset_key,
            completed=s.completed,
            inflight=s.inflight,
            dead=s.dead,
            percent_done=s.percent_done,
            eta_seconds=s.eta_seconds,
            throughput_blocks_per_s=s.throughput_blocks_per_s,
            lag_blocks=s.lag_blocks,
            done=s.done,
            blocked_reason=s.blocked_reason,
            enabled=j.enabled,
        )
        for j in jobs
        for s in j.streams
    ]


def progress_lines(progress: list[StreamProgress]) -> list[str]:
    """One line per job: ``demo: blocks 42.0% (...); logs done (...)``."""
    by_job: dict[str, list[str]] = {}
    for p in progress:
        by_job.setdefault(p.job_name, []).append(p.line())
    return [f"{job}: " + "; ".join(lines) for job, lines in by_job.items()]


def every_org_progress_lines(rt: Runtime) -> list[str]:
    """``progress_lines`` of every org with work, the deployment's own first and unprefixed,
    each other org's jobs named as its Dagster keys are (``org_beta/demo: ...``)."""
    lines: list[str] = []
    for org_rt in orgs.work_runtimes(rt):
        prefix = orgs.runtime_prefix(org_rt)
        for line in progress_lines(stream_progress(org_rt)):
            lines.append(f"{prefix}/{line}" if prefix else line)
    return lines
