"""Incremental integrity: what one scheduled pass verifies, within a budget of RPC calls.

Each live dataset version records when it was last verified (``verified_at``, state 0014).
A pass (the ``trace_integrity`` schedule, or ``trace-lite verify --incremental``) takes, per
serving part of every stream (``registry.visible_parts``):

1. every part whose version was never verified (new commits, repairs and re-syncs: a changed
   range is a new version), oldest range first, and then
2. up to ``TRACE_INTEGRITY_SAMPLE_RANGES`` parts of already verified versions, stalest
   ``verified_at`` first (a rolling sample: over many passes every range comes round again),

while the estimated RPC calls stay within ``TRACE_INTEGRITY_RPC_CALLS_PER_PASS`` (one header
per block for blocks and transactions, plus receipts at most once per block for logs; a pass
always takes at least one part, so it never stalls). New parts left over wait for the next pass,
first in line. Each verdict is recorded on its version (``verified_at``, ``verified_passed``);
``trace-lite verify`` (``--all`` or any selection) records its verdicts too.

Choosing is pure (``plan_pass``); ``scheduled_reports`` reads the registry, verifies the chosen
parts in windows of adjacent parts (``TRACE_INTEGRITY_RANGES_PER_TICK`` parts at most) and
records the verdicts.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from trace_core.chain_sync.store import StreamRow
from trace_core.datasets import registry
from trace_core.db.queries import q
from trace_core.integrity.verify import (
    RPC_DATASETS,
    StreamReport,
    integrity_tick,
    select_streams,
    verify_stream,
)
from trace_core.runtime import Runtime


@dataclass(frozen=True)
class Candidate:
    """One serving part of a stream and when its version was last verified (None: never)."""

    stream: StreamRow
    start: int
    end: int
    dataset_version: uuid.UUID
    verified_at: datetime | None

    @property
    def calls(self) -> int:
        return estimate_calls(self.stream.cryo_dataset_name, self.end - self.start)


def estimate_calls(dataset: str, blocks: int) -> int:
    """RPC calls verifying ``blocks`` blocks of ``dataset`` costs at most: a header per block
    (blocks, transactions, logs; blocks also the next block's, for the parent-hash link),
    receipts per block for logs; none for other datasets."""
    if dataset not in RPC_DATASETS:
        return 0
    return blocks * (2 if dataset == "logs" else 1) + (1 if dataset == "blocks" else 0)


@dataclass
class PassPlan:
    new: list[Candidate] = field(default_factory=list)
    sampled: list[Candidate] = field(default_factory=list)
    deferred: int = 0  # never-verified parts left for the next pass (over budget)
    calls: int = 0  # estimated RPC calls of the chosen parts

    @property
    def chosen(self) -> list[Candidate]:
        return [*self.new, *self.sampled]


def plan_pass(
    candidates: Sequence[Candidate], *, budget_calls: int, sample_ranges: int
) -> PassPlan:
    """New parts first (by stream, then block), then the stalest verified ones, within the
    budget; at least one part when there is any. Pure."""
    plan = PassPlan()
    new = sorted(
        (c for c in candidates if c.verified_at is None),
        key=lambda c: (c.stream.job_name, c.stream.dataset_key, c.start),
    )
    old = sorted(
        (c for c in candidates if c.verified_at is not None),
        key=lambda c: (c.verified_at, c.stream.job_name, c.stream.dataset_key, c.start),
    )
    for c in new:
        if plan.calls + c.calls > budget_calls and plan.new:
            plan.deferred += 1
            continue
        plan.new.append(c)
        plan.calls += c.calls
    for c in old:
        if len(plan.sampled) >= sample_ranges:
            break
        if plan.calls + c.calls > budget_calls and plan.chosen:
            break
        plan.sampled.append(c)
        plan.calls += c.calls
    return plan


def windows(chosen: Iterable[Candidate], max_parts: int) -> list[tuple[StreamRow, int, int]]:
    """Adjacent chosen parts of one stream merged into windows of at most ``max_parts``."""
    by_stream: dict[tuple[uuid.UUID, str], list[Candidate]] = {}
    for c in chosen:
        by_stream.setdefault((c.stream.job_id, c.stream.dataset_key), []).append(c)
    out: list[tuple[StreamRow, int, int]] = []
    for parts in by_stream.values():
        parts.sort(key=lambda c: c.start)
        start, end, count = parts[0].start, parts[0].end, 1
        for c in parts[1:]:
            if c.start == end and count < max(max_parts, 1):
                end, count = c.end, count + 1
                continue
            out.append((parts[0].stream, start, end))
            start, end, count = c.start, c.end, 1
        out.append((parts[0].stream, start, end))
    return out


def candidates(rt: Runtime, streams: Sequence[StreamRow]) -> list[Candidate]:
    """Every serving part of ``streams`` with its version's ``verified_at``."""
    out: list[Candidate] = []
    with rt.state() as conn:
        rows = conn.execute(
            q("integrity", "verification_state"),
            {"dataset_uuids": [s.dataset_uuid for s in streams]},
        ).fetchall()
        verified = {r[0]: r[1] for r in rows}
        for s in streams:
            for part in registry.visible_parts(registry.versions_of_dataset(conn, s.dataset_uuid)):
                version = part.record.dataset_version
                out.append(Candidate(s, part.start, part.end, version, verified.get(version)))
    return out


def record_verdicts(rt: Runtime, reports: Iterable[StreamReport]) -> int:
    """Stamp each verified version with ``verified_at`` and its verdict; returns how many."""
    n = 0
    with rt.state() as conn, conn.transaction():
        for report in reports:
            for r in report.ranges:
                if r.dataset_version is None:
                    continue
                conn.execute(
                    q("integrity", "record_verification"),
                    {"dataset_version": uuid.UUID(r.dataset_version), "passed": r.passed},
                )
                n += 1
    return n


def scheduled_reports(
    rt: Runtime, streams: Sequence[StreamRow] | None = None
) -> Iterator[StreamReport]:
    """One incremental pass (see the module docstring): verify the planned windows, record
    each verdict, yield each window's report."""
    s = rt.settings
    chosen = plan_pass(
        candidates(rt, select_streams(rt) if streams is None else streams),
        budget_calls=s.integrity_rpc_calls_per_pass,
        sample_ranges=s.integrity_sample_ranges,
    ).chosen
    for stream, start, end in windows(chosen, s.integrity_ranges_per_tick):
        report = verify_stream(rt, stream, start=start, end=end)
        record_verdicts(rt, [report])
        yield report


def full_reports(rt: Runtime, streams: Sequence[StreamRow] | None = None) -> Iterator[StreamReport]:
    """Every committed range of ``streams`` (default all), in bounded steps of
    ``TRACE_INTEGRITY_RANGES_PER_TICK`` ranges (``verify.integrity_tick``), each verdict
    recorded: what ``trace-lite verify --all`` and the check run from the UI do."""
    selected = None if streams is None else {(s.job_id, s.dataset_key) for s in streams}
    pos = ""
    while True:
        report, pos = integrity_tick(rt, pos, rt.settings.integrity_ranges_per_tick)
        if report is None:
            return
        if selected is None or (report.job_id, report.dataset_key) in selected:
            record_verdicts(rt, [report])
            yield report
        if not pos:
            return
