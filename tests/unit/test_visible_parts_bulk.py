"""``registry.visible_parts`` (O(n log n) since issue 25) against a per-block reference."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

from trace_core.datasets.registry import Coverage, VersionRecord, visible_parts

DS = uuid.UUID("6f8b4b60-1e53-51d1-807c-93fad2c5ac95")


def _rec(start: int, end: int, age: int) -> VersionRecord:
    return VersionRecord(
        dataset_version=uuid.uuid4(), dataset_uuid=DS, org_id=uuid.uuid4(),
        dataset_key="blocks", chain_id=1, range_start=start, range_end=end, config_hash="c",
        schema_hash="s", storage_prefix="p/", manifest_key="p/_manifest.json", row_count=0,
        bytes=0, file_count=0, task_id=None, attempt=None,
        created_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=age),
    )  # fmt: skip


def _reference(records: list[VersionRecord], blocks: int) -> dict[int, uuid.UUID]:
    """Per block, the version that serves it: the newest covering one (then the widest)."""
    order = lambda r: (r.created_at, r.range_end - r.range_start, str(r.dataset_version))  # noqa: E731
    out: dict[int, uuid.UUID] = {}
    for block in range(blocks):
        covering = [r for r in records if r.range_start <= block < r.range_end]
        if covering:
            out[block] = max(covering, key=order).dataset_version
    return out


def test_visible_parts_match_the_per_block_reference_on_random_histories() -> None:
    rng = random.Random(25)
    for _ in range(300):
        recs = []
        for _ in range(rng.randint(0, 25)):
            a = rng.randrange(0, 60)
            recs.append(_rec(a, a + rng.randint(1, 20), rng.randint(0, 12)))  # ties included
        parts = visible_parts(recs)
        got = {b: p.record.dataset_version for p in parts for b in range(p.start, p.end)}
        assert got == _reference(recs, 90)
        # parts are disjoint, sorted, and each lies inside its version's range
        assert all(x.end <= y.start for x, y in zip(parts, parts[1:], strict=False))
        assert all(p.record.range_start <= p.start < p.end <= p.record.range_end for p in parts)


def test_a_long_consecutive_history_stays_one_interval() -> None:
    cov = Coverage()
    for i in reversed(range(1000)):  # newest first, as visible_parts walks a sync's history
        assert cov.add(i * 10, i * 10 + 10) == [(i * 10, i * 10 + 10)]
    assert (cov.starts, cov.ends) == ([0], [10_000])
    assert cov.add(5, 20_000) == [(10_000, 20_000)]
    assert cov.add(30_000, 30_010) == [(30_000, 30_010)]
    assert cov.add(25_000, 40_000) == [(25_000, 30_000), (30_010, 40_000)]
    assert (cov.starts, cov.ends) == ([0, 25_000], [20_000, 40_000])


def test_superseded_since_matches_the_pairwise_definition() -> None:
    """``retention.superseded``: since = the newest created_at among the newer versions
    overlapping it (the definition, compared pairwise here) on random histories."""
    from trace_core.datasets.retention import superseded

    rng = random.Random(7)
    for _ in range(200):
        recs = []
        for _ in range(rng.randint(1, 25)):
            a = rng.randrange(0, 60)
            recs.append(_rec(a, a + rng.randint(1, 30), rng.randint(0, 12)))
        serving = {p.record.dataset_version for p in visible_parts(recs)}
        want = {}
        for r in recs:
            if r.dataset_version in serving:
                continue
            newer = [
                o.created_at
                for o in recs
                if o is not r
                and o.range_start < r.range_end
                and r.range_start < o.range_end
                and o.created_at >= r.created_at
            ]
            want[r.dataset_version] = max(newer, default=r.created_at)
        assert {s.record.dataset_version: s.since for s in superseded(recs)} == want
