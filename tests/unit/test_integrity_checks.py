"""The pure integrity checks: rows, hash chain across neighbours, counts vs the chain, ranges."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from trace_core.datasets.registry import VersionRecord, VisiblePart
from trace_core.errors import InvalidPayload
from trace_core.integrity import check
from trace_core.integrity.check import BlockFacts
from trace_core.integrity.repair import ranges_to_repair, repair_config_hash
from trace_core.integrity.verify import RangeResult, StreamReport, parse_range


def _rec(start: int, end: int) -> VersionRecord:
    return VersionRecord(
        dataset_version=uuid.uuid4(), dataset_uuid=uuid.uuid4(), org_id=uuid.uuid4(),
        dataset_key="blocks", chain_id=1, range_start=start, range_end=end,
        config_hash="cryo_ingest.blocks:v1", schema_hash="x", storage_prefix="p/",
        manifest_key="p/_manifest.json", row_count=0, bytes=0, file_count=0, task_id=None,
        attempt=None, created_at=datetime.now(UTC),
    )  # fmt: skip


def _part(start: int, end: int) -> VisiblePart:
    return VisiblePart(_rec(start, end), start, end)


def _h(n: int, fork: str = "") -> bytes:
    return f"{fork}block-{n}".encode().ljust(32, b"\0")


def _blocks(numbers: list[int]) -> pa.Table:
    return pa.table(
        {"block_number": pa.array(numbers, pa.uint32()), "block_hash": [_h(n) for n in numbers]}
    )


def test_rows_find_gaps_duplicates_and_strays() -> None:
    part = _part(10, 15)
    assert check.check_rows(part, _blocks([10, 11, 12, 13, 14]), "blocks") == []
    kinds = {
        f.kind: f.detail for f in check.check_rows(part, _blocks([10, 11, 11, 14, 99]), "blocks")
    }
    assert set(kinds) == {"out_of_range", "duplicate", "block_gap"}
    assert "99" in kinds["out_of_range"] and "12, 13" in kinds["block_gap"]
    logs = pa.table({"block_number": [10, 10, 11], "log_index": [0, 0, 1]})
    [dup] = check.check_rows(part, logs, "logs")
    assert dup.kind == "duplicate" and "block_number/log_index" in dup.detail


def test_hash_chain_across_neighbours_and_against_the_chain() -> None:
    part = _part(10, 13)
    hashes = {n: _h(n) for n in range(9, 14)}
    chain = {n: BlockFacts(_h(n), _h(n - 1), 0) for n in range(9, 14)}
    assert check.check_hash_chain(part, hashes, {}, chain) == []
    # the neighbour below was committed from another fork: the first block's parent breaks
    broken = {**hashes, 9: _h(9, "old")}
    [f] = check.check_hash_chain(part, broken, {}, chain)
    assert f.kind == "parent_hash" and "10" in f.detail
    # our own blocks are orphaned: hashes differ from the chain's, and the neighbour above breaks
    orphan = {**hashes, 11: _h(11, "old"), 12: _h(12, "old")}
    kinds = {f.kind: f.detail for f in check.check_hash_chain(part, orphan, {}, chain)}
    assert "11, 12" in kinds["block_hash"] and "13" in kinds["parent_hash"]
    # a chain that got shorter: stored blocks it lacks count as differing
    [short] = check.check_hash_chain(part, hashes, {}, {n: chain[n] for n in (9, 10)})
    assert short.kind == "block_hash" and "11, 12" in short.detail
    # without chain facts, stored parent hashes still link blocks
    parents = {n: _h(n - 1) for n in range(10, 13)} | {11: _h(10, "x")}
    [f] = check.check_hash_chain(part, hashes, parents, {})
    assert f.kind == "parent_hash" and "11" in f.detail


def test_counts_compare_rows_per_block_with_the_chain() -> None:
    part = _part(0, 4)
    table = pa.table({"block_number": [1, 1, 3]})
    assert check.check_counts(part, table, "transactions", {0: 0, 1: 2, 2: 0, 3: 1}) == []
    [f] = check.check_counts(part, table, "transactions", {0: 0, 1: 2, 2: 1, 3: 1})
    assert f.kind == "tx_count" and "first block 2: 0 rows, chain 1" in f.detail
    [f] = check.check_counts(part, table, "logs", {1: 3})
    assert f.kind == "log_count"
    assert check.check_counts(part, table, "blocks", {1: 9}) == []


def test_ranges_and_repair_spans() -> None:
    assert parse_range("100-200") == (100, 200)
    for text in ("200-100", "5", "a-b", "3-3"):
        with pytest.raises(InvalidPayload, match="--range"):
            parse_range(text)
    assert repair_config_hash("cryo_ingest.blocks:v1", 1) == "cryo_ingest.blocks:v1:repair-1"
    assert (
        repair_config_hash("cryo_ingest.blocks:v1:repair-1", 2) == "cryo_ingest.blocks:v1:repair-2"
    )
    report = StreamReport("j", uuid.uuid4(), "blocks", 1)
    bad = RangeResult("j", "blocks", 0, 100, "v", [check.Finding("tampered", 0, 100, "x")])
    bad.served = [(0, 40), (60, 100)]  # a newer version serves [40, 60)
    report.ranges = [bad, RangeResult("j", "blocks", 100, 200, "w", served=[(100, 200)])]
    report.gaps = [check.Finding("coverage_gap", 200, 250, "gap")]
    assert ranges_to_repair(report) == {
        (0, 40): ("tampered",),
        (60, 100): ("tampered",),
        (200, 250): ("coverage_gap",),
    }
