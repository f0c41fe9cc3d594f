"""integrity_check: verify a chain_sync stream's committed ranges against their manifests,
each other and the chain.

For every committed version that serves blocks (``registry.visible_parts``) in the asked range:

1. files: the manifest exists and parses, matches the registry, every listed object exists
   with the manifest's size, sha256 and Parquet row count, and nothing else lies under the
   version prefix;
2. rows: block numbers inside the range, natural keys unique, and (blocks) every block once;
3. coverage: no block between the job's ``from_block`` and the highest committed block lacks
   a version (ranges still being synced are not gaps);
4. chain (when the pool's RPC URL is set): blocks' hashes equal the chain's and parent hashes
   link across each range and its neighbours; transactions and logs per block equal the
   chain's transaction counts (``eth_getBlockByNumber``) and receipts' logs
   (``eth_getBlockReceipts``), fetched in JSON-RPC batches.

``verify`` never changes anything; ``trace_core.integrity.repair`` acts on its reports.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from trace_core.chain_sync import store
from trace_core.chain_sync.planner import range_partition_key
from trace_core.chain_sync.store import StreamRow
from trace_core.datasets import registry
from trace_core.datasets.registry import VersionRecord, VisiblePart
from trace_core.errors import InvalidPayload, RpcError
from trace_core.integrity import check
from trace_core.integrity.check import BlockFacts, Finding, VersionData
from trace_core.rpc.client import RpcClient, hex_int
from trace_core.runtime import Runtime
from trace_core.settings import rpc_pool_env_var, rpc_pool_url

log = logging.getLogger(__name__)

RPC_DATASETS = frozenset({"blocks", "transactions", "logs"})


@dataclass
class RangeResult:
    """The verdict on one committed version's served blocks ``[range_start, range_end)``."""

    job_name: str
    dataset_key: str
    range_start: int
    range_end: int
    dataset_version: str | None
    findings: list[Finding] = field(default_factory=list)
    # end-exclusive sub-ranges this version serves (a repair re-syncs exactly these)
    served: list[tuple[int, int]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.findings

    @property
    def partition_key(self) -> str:
        return range_partition_key(self.range_start, self.range_end)

    def as_json(self) -> dict[str, Any]:
        return {
            "job": self.job_name,
            "stream": self.dataset_key,
            "range": [self.range_start, self.range_end],
            "dataset_version": self.dataset_version,
            "passed": self.passed,
            "findings": [f.as_json() for f in self.findings],
        }


@dataclass
class StreamReport:
    job_name: str
    job_id: uuid.UUID
    dataset_key: str
    chain_id: int
    ranges: list[RangeResult] = field(default_factory=list)
    gaps: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rpc_checked: bool = False
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.gaps and all(r.passed for r in self.ranges)

    @property
    def findings(self) -> list[Finding]:
        return [*self.gaps, *(f for r in self.ranges for f in r.findings)]

    def as_json(self) -> dict[str, Any]:
        return {
            "job": self.job_name,
            "stream": self.dataset_key,
            "chain_id": self.chain_id,
            "passed": self.passed,
            "rpc_checked": self.rpc_checked,
            "ranges_checked": len(self.ranges),
            "gaps": [g.as_json() for g in self.gaps],
            "ranges": [r.as_json() for r in self.ranges],
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class ChainFacts:
    blocks: Mapping[int, BlockFacts]
    logs: Mapping[int, int]


def parse_range(text: str) -> tuple[int, int]:
    """``"A-B"`` -> ``(A, B)``, end-exclusive. Raises ``InvalidPayload`` naming ``--range``."""
    a, sep, b = text.partition("-")
    if not sep or not a.strip().isdigit() or not b.strip().isdigit() or int(b) <= int(a):
        raise InvalidPayload(
            f"--range must be A-B with 0 <= A < B (end-exclusive), got {text!r}", field="range"
        )
    return int(a), int(b)


def select_streams(
    rt: Runtime, job: str | None = None, stream: str | None = None
) -> list[StreamRow]:
    """Active streams of one job (or all). Raises ``ChainSyncJobNotFound`` / ``InvalidPayload``
    (unknown stream, naming the job's streams)."""
    with rt.state() as conn:
        streams = store.list_streams(conn, rt.settings.org_id, job)
    if stream is not None:
        chosen = [s for s in streams if s.dataset_key == stream]
        if not chosen:
            known = ", ".join(sorted({s.dataset_key for s in streams})) or "none"
            raise InvalidPayload(f"no stream {stream!r} (streams: {known})", field="stream")
        return chosen
    return streams


def fetch_chain_facts(rpc: RpcClient, blocks: list[int], *, want_logs: bool) -> ChainFacts:
    """Hash, parent hash and tx count of each block (batched ``eth_getBlockByNumber``); with
    ``want_logs``, log counts from ``eth_getBlockReceipts`` of blocks with transactions."""
    replies = rpc.batch([("eth_getBlockByNumber", [hex(n), False]) for n in blocks])
    facts: dict[int, BlockFacts] = {}
    for n, block in zip(blocks, replies, strict=True):
        if not block:
            continue  # the node lacks the block: reported by the hash checks as nothing known
        facts[n] = BlockFacts(
            hash=bytes.fromhex(str(block["hash"])[2:]),
            parent_hash=bytes.fromhex(str(block["parentHash"])[2:]),
            tx_count=len(block.get("transactions") or []),
        )
    logs: dict[int, int] = {}
    if want_logs:
        busy = [n for n in blocks if n in facts and facts[n].tx_count]
        receipts = rpc.batch([("eth_getBlockReceipts", [hex(n)]) for n in busy])
        logs = {n: 0 for n in blocks if n in facts}
        for n, block_receipts in zip(busy, receipts, strict=True):
            logs[n] = sum(len(r.get("logs") or []) for r in (block_receipts or []))
    return ChainFacts(facts, logs)


def _in_scope(part: VisiblePart, start: int | None, end: int | None) -> bool:
    return (start is None or part.end > start) and (end is None or part.start < end)


def _pending_ranges(rt: Runtime, s: StreamRow) -> list[tuple[int, int]]:
    """Ranges of the stream still being synced (not gaps yet)."""
    with rt.state() as conn:
        ranges = store.list_ranges(conn, s.job_id)
    return [
        (r.range_start, r.range_end)
        for r in ranges
        if r.dataset_key == s.dataset_key and r.status == "scheduled"
    ]


def verify_stream(
    rt: Runtime,
    s: StreamRow,
    *,
    start: int | None = None,
    end: int | None = None,
    use_rpc: bool = True,
    environ: Mapping[str, str] | None = None,
) -> StreamReport:
    """Verify the committed ranges of one stream overlapping ``[start, end)`` (all by default).

    Changes nothing. Storage errors other than missing objects propagate; RPC failures skip
    the chain checks with a note (the report says ``rpc_checked=False``).
    """
    t0 = time.perf_counter()
    report = StreamReport(s.job_name, s.job_id, s.dataset_key, s.chain_id)
    with rt.state() as conn:
        job = store.get_job(conn, rt.settings.org_id, s.job_id)
        records = registry.versions_of_dataset(conn, s.dataset_uuid)
    parts = registry.visible_parts(records)
    scoped = [i for i, p in enumerate(parts) if _in_scope(p, start, end)]
    dataset = s.cryo_dataset_name
    columns = check.columns_for(dataset)
    loaded: dict[uuid.UUID, VersionData] = {}

    def load(rec: VersionRecord) -> VersionData:
        if rec.dataset_version not in loaded:
            loaded[rec.dataset_version] = check.check_version_files(rt.store, rec, columns)
        return loaded[rec.dataset_version]

    # coverage: every block from from_block (or start) to the highest committed block (or end)
    if parts:
        lo = max(job.from_block, start) if start is not None else job.from_block
        hi = min(parts[-1].end, end) if end is not None else parts[-1].end
        covered = [(p.start, p.end) for p in parts] + _pending_ranges(rt, s)
        for a, b in registry.gaps(covered, lo, hi):
            report.gaps.append(
                Finding("coverage_gap", a, b, f"no committed version serves blocks [{a}, {b})")
            )
    if not scoped:
        report.seconds = time.perf_counter() - t0
        return report

    # neighbours feed the hash chain across the first and last range
    window = list(range(max(scoped[0] - 1, 0), min(scoped[-1] + 2, len(parts))))
    tables: dict[int, pa.Table] = {}
    for i in window:
        data = load(parts[i].record)
        if data.table is not None:
            tables[i] = check.rows_in_part(parts[i], data.table)

    facts = ChainFacts({}, {})
    url = rpc_pool_url(s.rpc_pool, environ) if use_rpc and dataset in RPC_DATASETS else None
    if use_rpc and dataset in RPC_DATASETS and url is None:
        report.notes.append(f"chain checks skipped: {rpc_pool_env_var(s.rpc_pool)} is not set")
    if url is not None:
        wanted = sorted({n for i in scoped for n in range(parts[i].start, parts[i].end)})
        if dataset == "blocks":
            wanted = sorted(set(wanted) | {parts[scoped[-1]].end})
        try:
            with RpcClient(
                url, label=f"pool {s.rpc_pool}", timeout=rt.settings.rpc_timeout_seconds
            ) as rpc:
                served = hex_int(rpc.call("eth_chainId"))
                if served != s.chain_id:
                    report.notes.append(
                        f"chain checks skipped: pool {s.rpc_pool} serves chain {served}, not {s.chain_id}"
                    )
                else:
                    facts = fetch_chain_facts(rpc, wanted, want_logs=dataset == "logs")
                    report.rpc_checked = True
        except RpcError as exc:
            report.notes.append(f"chain checks skipped: {exc}")

    hashes: dict[int, bytes] = {}
    parents: dict[int, bytes] = {}
    if dataset == "blocks":
        for table in tables.values():
            h, p = check.block_hashes(table)
            hashes.update(h)
            parents.update(p)
    expected: dict[int, int] = {}
    if dataset == "transactions":
        expected = {n: f.tx_count for n, f in facts.blocks.items()}
    elif dataset == "logs":
        expected = dict(facts.logs)

    results: dict[uuid.UUID, RangeResult] = {}
    for i in scoped:
        part = parts[i]
        rec = part.record
        data = load(rec)
        result = results.get(rec.dataset_version)
        if result is None:
            result = RangeResult(
                s.job_name,
                s.dataset_key,
                rec.range_start,
                rec.range_end,
                str(rec.dataset_version),
                list(data.findings),
            )
            results[rec.dataset_version] = result
        result.served.append((part.start, part.end))
        if data.table is None:
            continue
        result.findings += check.check_rows(part, data.table, dataset)
        if dataset == "blocks":
            result.findings += check.check_hash_chain(part, hashes, parents, facts.blocks)
        result.findings += check.check_counts(part, data.table, dataset, expected)
    report.ranges = sorted(results.values(), key=lambda r: (r.range_start, r.range_end))
    report.seconds = time.perf_counter() - t0
    log.info(
        "integrity check",
        extra={
            "job": s.job_name,
            "stream": s.dataset_key,
            "ranges": len(report.ranges),
            "findings": len(report.findings),
        },
    )
    return report


def verify(
    rt: Runtime,
    *,
    job: str | None = None,
    stream: str | None = None,
    block_range: tuple[int, int] | None = None,
    use_rpc: bool = True,
) -> list[StreamReport]:
    """``verify_stream`` for each selected stream (see ``select_streams``)."""
    start, end = block_range if block_range else (None, None)
    return [
        verify_stream(rt, s, start=start, end=end, use_rpc=use_rpc)
        for s in select_streams(rt, job, stream)
    ]


# --- scheduled checks --------------------------------------------------------------------


def next_window(
    rt: Runtime, s: StreamRow, after_block: int, max_ranges: int
) -> tuple[int, int] | None:
    """Blocks ``[a, b)`` covering the next ``max_ranges`` committed parts of ``s`` that end
    after ``after_block``, or None when none is left."""
    with rt.state() as conn:
        parts = registry.visible_parts(registry.versions_of_dataset(conn, s.dataset_uuid))
    ahead = [p for p in parts if p.end > after_block][: max(max_ranges, 1)]
    if not ahead:
        return None
    return max(ahead[0].start, after_block), ahead[-1].end


def integrity_tick(
    rt: Runtime, cursor: str | None, max_ranges: int
) -> tuple[StreamReport | None, str]:
    """One bounded step of a pass: verify the next ``max_ranges`` committed ranges of the
    stream the cursor (``{job_id}:{dataset_key}:{block}``, empty = start of a pass) points
    at, moving to the next stream when one is done. Returns the report and the next cursor;
    ``(None, "")`` when the pass is complete."""
    streams = select_streams(rt)
    if not streams:
        return None, ""
    job_id, _, rest = (cursor or "").partition(":")
    key, _, block_text = rest.rpartition(":")
    matched = [i for i, s in enumerate(streams) if str(s.job_id) == job_id and s.dataset_key == key]
    idx = matched[0] if matched else 0
    block = int(block_text) if matched and block_text.isdigit() else 0
    for i in range(idx, len(streams)):
        s = streams[i]
        window = next_window(rt, s, block if i == idx else 0, max_ranges)
        if window is None:
            continue
        report = verify_stream(rt, s, start=window[0], end=window[1])
        return report, f"{s.job_id}:{s.dataset_key}:{window[1]}"
    return None, ""
