"""Epochs on real Postgres: which epochs a stream has, their progress and completeness, and
``retry --range`` with an epoch's key (``trace_core.chain_sync.epochs``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.integration.test_planner import ORG, apply, complete, fixed_job
from tests.integration.test_revive import fail_attempt
from trace_core.chain_sync import epochs, planner
from trace_core.chain_sync import revive as chain_retry
from trace_core.chain_sync.planner import range_partition_key as key
from trace_core.db.connection import Databases, connect
from trace_core.errors import UnknownRange


@pytest.fixture
def conn(dbs: Databases) -> Iterator[psycopg.Connection[Any]]:
    with connect(dbs.state_url, autocommit=True) as c:
        yield c


def _target(conn: psycopg.Connection[Any], job: str = "job") -> epochs.StreamTarget:
    return epochs.stream_target(conn, ORG, job, "blocks")


def test_epochs_cover_a_fixed_target_up_front_and_complete_as_ranges_commit(
    conn: psycopg.Connection[Any],
) -> None:
    # chunks of 1500 in epochs of 2000: [1500, 3000) crosses into the second epoch
    apply(conn, fixed_job(to_block=4500, chunk=1500, inflight=2, extra="epoch_blocks: 2000\n"))
    target = _target(conn)
    assert target.epoch_blocks == 2000
    # every epoch exists before anything is planned: unplanned ones show as missing
    assert target.epoch_keys() == [key(0, 2000), key(2000, 4000), key(4000, 6000)]
    assert epochs.complete_epochs(conn, target) == []

    planned = planner.plan_tick(conn, org_id=ORG).planned
    assert [(p.range_start, p.range_end) for p in planned] == [(0, 1500), (1500, 3000)]
    assert planned[1].epoch_keys == [key(0, 2000), key(2000, 4000)]

    first = epochs.progress_of(conn, target, 0, 2000)
    assert [r.key for r in first.ranges] == [key(0, 1500), key(1500, 3000)]
    assert (len(first.committed), first.ranges_total, first.complete) == (0, 2, False)

    versions = {p.range_start: complete(conn, p.task_id) for p in planned}
    first = epochs.progress_of(conn, target, 0, 2000)
    assert first.complete and first.blocks_committed == 2000 == first.blocks_expected
    assert first.versions() == {
        key(0, 1500): str(versions[0]),
        key(1500, 3000): str(versions[1500]),
    }
    # the second epoch has [2000, 3000) committed and [3000, 4000) not planned yet
    second = epochs.progress_of(conn, target, 2000, 4000)
    assert (second.blocks_committed, second.blocks_expected) == (1000, 2000)
    assert (len(second.committed), second.ranges_total, second.complete) == (1, 2, False)
    assert epochs.complete_epochs(conn, target) == [(0, 2000)]

    for p in planner.plan_tick(conn, org_id=ORG).planned:  # [3000, 4500)
        complete(conn, p.task_id)
    # the last epoch is complete at the job's to_block, not at its own end
    last = epochs.epoch_progress(conn, ORG, "job", "blocks", 3000, 4500)
    assert [p.key for p in last] == [key(2000, 4000), key(4000, 6000)]
    assert all(p.complete for p in last) and last[1].blocks_expected == 500
    assert epochs.complete_epochs(conn, target) == [(0, 2000), (2000, 4000), (4000, 6000)]


def test_a_follow_head_stream_has_epochs_up_to_its_head() -> None:
    target = epochs.StreamTarget(
        job_id=uuid.uuid4(),
        job_name="follow",
        dataset_key="blocks",
        chunk_size=1000,
        active=True,
        mode="follow_head",
        from_block=150_000,
        to_block=None,
        tail_lag=10,
        epoch_blocks=100_000,
        next_block=160_000,
        head_block=300_009,  # planned up to 300,000 (head + 1 - tail_lag)
    )
    assert target.known_end == 300_000
    assert target.epoch_keys() == [key(100_000, 200_000), key(200_000, 300_000)]
    # a follow_head epoch completes only over its whole window (from from_block)
    assert target.part_of_job(100_000, 200_000) == (150_000, 200_000)
    assert epochs.is_epoch_key(key(200_000, 300_000), 100_000)
    assert not epochs.is_epoch_key(key(200_000, 201_000), 100_000)


def test_retry_with_an_epoch_key_revives_the_dead_ranges_inside_it(
    conn: psycopg.Connection[Any],
) -> None:
    apply(conn, fixed_job(to_block=4000, inflight=4, extra="epoch_blocks: 2000\n"))
    planned = planner.plan_tick(conn, org_id=ORG).planned  # 4 ranges of 1000
    complete(conn, planned[0].task_id)
    fail_attempt(conn, planned[1].task_id, fatal=True)
    fail_attempt(conn, planned[2].task_id, fatal=True)
    report = chain_retry.retry(conn, ORG, job="job", stream="blocks", block_range=(0, 2000))
    # only [1000, 2000): [2000, 3000) is dead too but in the next epoch
    assert [o.task_id for o in report.revived] == [planned[1].task_id]
    assert report.not_dead == []
    # an epoch with nothing dead revives nothing; one with nothing planned is unknown
    assert chain_retry.retry(conn, ORG, job="job", block_range=(0, 2000)).outcomes == []
    with pytest.raises(UnknownRange, match=r"\[4000, 6000\)"):
        chain_retry.retry(conn, ORG, job="job", stream="blocks", block_range=(4000, 6000))
    # an exact range still means that range, dead or not
    exact = chain_retry.retry(conn, ORG, job="job", block_range=(2000, 3000))
    assert [o.task_id for o in exact.revived] == [planned[2].task_id]
