"""Which claimed task a worker run's free thread runs next (``worker_run.furthest_behind``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from trace_core.engine.worker_run import furthest_behind
from trace_core.tasks.lifecycle import Lease


def _lease(payload: dict[str, Any]) -> Lease:
    return Lease(uuid.uuid4(), 1, uuid.uuid4(), datetime.now(UTC), "cryo_ingest", payload)


def _range(job: str, start: int) -> Lease:
    return _lease({"job_id": job, "dataset_key": "x", "range_start": start})


def test_the_range_furthest_behind_in_its_job_runs_first() -> None:
    # blocks ran ahead (2000, 2250), transactions lag (500): the lagging range goes first
    leases = [_range("a", 2000), _range("a", 2250), _range("a", 500), _range("a", 750)]
    assert furthest_behind(leases) == 2
    leases.pop(2)
    assert furthest_behind(leases) == 2  # then 750


def test_jobs_interleave_and_ties_keep_claim_order() -> None:
    # each job's lowest range is 0 ahead: between jobs (and equals) the earliest claimed wins
    leases = [_range("b", 9_000_000), _range("a", 1000), _range("a", 1000)]
    assert furthest_behind(leases) == 0
    leases = [_range("a", 1250), _range("b", 9_000_250), _range("b", 9_000_000)]
    assert furthest_behind(leases) == 0
    assert furthest_behind(leases[1:]) == 1


def test_tasks_that_are_not_ranges_are_never_held_back() -> None:
    leases = [_range("a", 4000), _range("a", 0), _lease({"transform": "t"})]
    assert furthest_behind(leases) == 1
    assert furthest_behind([leases[0], leases[2]]) == 0  # both 0 ahead: claim order
