"""Integrity passes and retention for the shell (the scheduled maintenance run and the check
run from the UI): ``trace_core.integrity`` and ``trace_core.datasets.retention`` behind one
doorway. Each function takes the runtime and opens its own connections."""

from __future__ import annotations

from collections.abc import Iterator

from trace_core.chain_sync.store import StreamRow
from trace_core.datasets.retention import VersionGcReport, scheduled_retention
from trace_core.db.queries import q
from trace_core.integrity import incremental
from trace_core.integrity.verify import RangeResult, StreamReport, select_streams
from trace_core.runtime import Runtime

__all__ = [
    "RangeResult",
    "StreamReport",
    "VersionGcReport",
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


def versions_committed_since(rt: Runtime, since: float) -> int:
    """Live dataset versions registered after ``since`` (epoch seconds): new ranges that no
    integrity pass has seen yet (the scheduled sensor starts a pass soon after them)."""
    with rt.state() as conn:
        row = conn.execute(
            q("integrity", "versions_committed_since"),
            {"org_id": rt.settings.org_id, "since": float(since)},
        ).fetchone()
    return int(row[0]) if row else 0
