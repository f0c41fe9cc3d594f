"""``compaction.plan_windows``: which windows of a dataset's versions are worth compacting."""

from __future__ import annotations

import dataclasses

from tests.unit.test_visible_parts_bulk import _rec
from trace_core.datasets.compaction import base_config, plan_windows


def _spans(windows: list) -> list[tuple[int, int, int]]:  # type: ignore[type-arg]
    return [(w.start, w.end, len(w.inputs)) for w in windows]


def test_only_fully_served_windows_of_one_schema_and_config_are_planned() -> None:
    recs = [_rec(a, a + 10, 1) for a in range(0, 100, 10)]  # [0, 100) in ranges of 10
    assert _spans(plan_windows(recs, 50)) == [(0, 50, 5), (50, 100, 5)]
    # a gap: [50, 100) is not planned; past the finalized end neither
    gap = [r for r in recs if r.range_start != 70]
    assert _spans(plan_windows(gap, 50)) == [(0, 50, 5)]
    assert _spans(plan_windows(recs, 50, upto=99)) == [(0, 50, 5)]
    # another schema in a window keeps it out; a repair's config counts as its stream's
    other = [dataclasses.replace(recs[1], schema_hash="other"), *recs[:1], *recs[2:]]
    assert _spans(plan_windows(other, 50)) == [(50, 100, 5)]
    repair = _rec(20, 30, 5)
    repair = dataclasses.replace(repair, config_hash="c:repair-1")
    assert base_config(repair.config_hash) == "c"
    planned = plan_windows([*recs, repair], 50)
    assert _spans(planned) == [(0, 50, 5), (50, 100, 5)]
    assert repair in planned[0].inputs and recs[2] not in planned[0].inputs
    assert recs[2].dataset_version in planned[0].overlapping  # checked again at registration


def test_a_version_across_a_boundary_serves_both_windows_and_min_versions_holds() -> None:
    wide = _rec(40, 60, 1)
    recs = [_rec(0, 40, 1), wide, _rec(60, 100, 1)]
    planned = plan_windows(recs, 50)
    assert _spans(planned) == [(0, 50, 2), (50, 100, 2)]
    assert [(p.start, p.end) for p in planned[0].parts] == [(0, 40), (40, 50)]
    assert not planned[0].parts[1].whole  # read with a block filter
    assert plan_windows([_rec(0, 50, 1)], 50) == []  # one version: nothing to gain
    # a window that already has a version of exactly its range is never planned again
    compacted = _rec(0, 50, 9)
    assert _spans(plan_windows([*recs, compacted, _rec(10, 20, 10)], 50)) == [(50, 100, 2)]
