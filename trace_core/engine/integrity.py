"""Integrity passes and retention for the shell (the scheduled maintenance run and the check
run from the UI): ``trace_core.integrity`` and ``trace_core.datasets.retention`` behind one
doorway. Each function takes the runtime and opens its own connections."""

from __future__ import annotations

from collections.abc import Iterator

from trace_core.chain_sync import store
from trace_core.chain_sync.store import StreamRow
from trace_core.datasets.compaction import CompactionReport, compact_levels
from trace_core.datasets.retention import VersionGcReport, scheduled_retention
from trace_core.db.queries import q
from trace_core.integrity import incremental
from trace_core.integrity.verify import RangeResult, StreamReport, select_streams
from trace_core.runtime import Runtime
from trace_core.tenancy.acting import orgs_with_work

__all__ = [
    "CompactionReport",
    "RangeResult",
    "StreamReport",
    "VersionGcReport",
    "compact_streams",
    "pass_reports",
    "versions_committed_since",
    "scheduled_retention",
    "select_streams",
]


def pass_reports(rt: Runtime, streams: list[StreamRow] | None = None) -> Iterator[StreamReport]:
    """Without ``streams``: one incremental pass (new and changed ranges, then a sample of the
    stalest, within an RPC budget). With them: every committed range of those streams."""
    if streams is None:
        return incremental.scheduled_reports(rt)
    return incremental.full_reports(rt, streams)


def compact_streams(
    rt: Runtime,
    job: str | None = None,
    *,
    dry_run: bool = False,
    limit: int | None = None,
) -> list[tuple[StreamRow, CompactionReport]]:
    """Compact the committed versions of every active chain_sync stream (of ``job``) into
    windows of the job's epoch (``epoch_blocks``), then ``TRACE_COMPACT_LEVELS`` - 1 tiers of
    10x larger windows, up to ``limit`` windows per stream and tier
    (``trace_core.datasets.compaction``). Cold versions are final (planned below the safe
    head), so every fully covered window is eligible. Without ``job``, jobs with an
    ``analytics:`` block are left out: their outputs are keyed by the input versions, so a
    compacted epoch would recompute them (same result, real cost); ``trace-lite compact --job``
    compacts them on purpose."""
    with rt.state() as conn:
        streams = store.list_streams(conn, rt.settings.org_id, job)
        if job is None:  # a named job is compacted whatever it runs
            rows = conn.execute(
                q("chain_sync", "jobs_with_analytics"), {"org_id": rt.settings.org_id}
            ).fetchall()
            analytics = {r[0] for r in rows}
            streams = [s for s in streams if s.job_name not in analytics]
        return [
            (
                s,
                compact_levels(
                    conn,
                    rt.store,
                    s.dataset_uuid,
                    s.epoch_blocks,
                    levels=rt.settings.compact_levels,
                    org_id=rt.settings.org_id,
                    dry_run=dry_run,
                    limit=limit,
                ),
            )
            for s in streams
        ]


def versions_committed_since(rt: Runtime, since: float) -> int:
    """Live dataset versions registered after ``since`` (epoch seconds): new ranges that no
    integrity pass has seen yet (the scheduled sensor starts a pass soon after them), of
    every org with chain_sync jobs."""
    total = 0
    with rt.state() as conn:
        for org in {str(rt.settings.org_id), *(str(o.org_id) for o in orgs_with_work(conn))}:
            row = conn.execute(
                q("integrity", "versions_committed_since"), {"org_id": org, "since": float(since)}
            ).fetchone()
            total += int(row[0]) if row else 0
    return total
