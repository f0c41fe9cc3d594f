"""Control of chain_sync through Dagster's harness: max_inflight, pause/resume, restart, re-apply.

These tests are about scheduling, not extraction, so cryo runs in fake mode (Parquet with cryo's
schemas, one blocks row per block); data correctness against a real chain is covered by
test_chain_sync_e2e.py and test_follow_head_dagster.py.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from dagster import DagsterInstance, SensorResult

from trace_core.chain_sync import status, store
from trace_core.chain_sync.epochs import epoch_windows
from trace_core.chain_sync.planner import range_partition_key
from trace_core.chain_sync.spec import DEFAULT_EPOCH_BLOCKS as EPOCH
from trace_core.cli.main import cli
from trace_core.datasets import registry
from trace_core.engine.dispatcher import dispatch_tick
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_core.tasks import lifecycle
from trace_dagster.definitions import build_definitions
from trace_dagster.driver import DriveReport, drive_until_idle
from trace_dagster.partitions import partitions_def_name, stream_asset_key
from trace_dagster.sensors.dispatcher import (
    PARTITIONS_RESYNC_SECONDS,
    PARTITIONS_SYNCED,
    dispatcher_result,
)

CHAIN_ID = 31337
DRIVE_TIMEOUT_SECONDS = 120.0
LEASE_WAIT_SECONDS = 10.0


class Crash(Exception):
    """Raised from the driver's tick callback: the process running Dagster dies mid-sync."""


@pytest.fixture
def rt(trace_env: Runtime, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    monkeypatch.setenv("TRACE_CRYO_MODE", "fake")
    monkeypatch.setenv("TRACE_RPC_POOL_CTL_URL", "http://127.0.0.1:9")  # never called in fake mode
    # These tests step through waves tick by tick: one batch per run unless a test says otherwise.
    monkeypatch.setenv("TRACE_WORKER_CONTINUE_SECONDS", "0")
    return Runtime(load_settings())


def _job_file(
    tmp_path: Path, name: str, to_block: int, streams: dict[str, tuple[int, int]]
) -> Path:
    """A fixed_target job over [0, to_block); ``streams`` maps key -> (chunk_size, max_inflight)."""
    body = "".join(
        f"  {key}: {{cryo_dataset_name: {key}, rpc_pool: ctl, chunk_size: {chunk}, "
        f"max_inflight: {inflight}}}\n"
        for key, (chunk, inflight) in streams.items()
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"kind: chain_sync\nname: {name}\nchain_id: {CHAIN_ID}\n"
        f"mode: {{kind: fixed_target, from_block: 0, to_block: {to_block}}}\nstreams:\n{body}"
    )
    return path


def _trace_lite(*args: str) -> str:
    """Run a ``trace-lite`` command in process (it reads TRACE_* from the environment)."""
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def _job_id(rt: Runtime, name: str) -> uuid.UUID:
    with rt.state() as conn:
        return store.resolve_job(conn, rt.settings.org_id, name)


def _ranges(rt: Runtime, name: str) -> list[store.RangeRow]:
    with rt.state() as conn:
        return store.list_ranges(conn, store.resolve_job(conn, rt.settings.org_id, name))


def _cursors(rt: Runtime, name: str) -> dict[str, int]:
    with rt.state() as conn:
        return {
            s.dataset_key: s.next_block for s in store.list_streams(conn, rt.settings.org_id, name)
        }


def _inflight(rt: Runtime, name: str) -> dict[str, int]:
    """Ranges holding a slot right now (planned, not completed or dead), per stream."""
    with rt.state() as conn:
        rows = conn.execute(
            """SELECT r.dataset_key, count(*) FILTER (WHERE r.status = 'scheduled')
               FROM state.chain_sync_scheduled_ranges r
               JOIN state.chain_sync_jobs j USING (job_id)
               WHERE j.name = %s GROUP BY r.dataset_key""",
            (name,),
        ).fetchall()
    return {key: int(n) for key, n in rows}


def _max_overlap(intervals: list[tuple[datetime, datetime | None]]) -> int:
    """Most intervals ``[created, completed)`` open at one instant (open ones never close)."""
    return max(
        sum(1 for c, done in intervals if c <= t and (done is None or t < done))
        for t, _ in intervals
    )


def _assert_synced_once(rt: Runtime, instance: DagsterInstance, name: str, to_block: int) -> None:
    """Every range completed, one committed version per range, every partition materialized."""
    by_stream: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for r in _ranges(rt, name):
        assert r.status == "completed", r
        by_stream[r.dataset_key].append((r.range_start, r.range_end))
    assert _cursors(rt, name) == {key: to_block for key in by_stream}
    for key, ranges in by_stream.items():
        ranges.sort()
        assert ranges[0][0] == 0 and ranges[-1][1] == to_block
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        with rt.state() as conn:
            dataset_uuid = store.stream_dataset_uuid(rt.settings.org_id, CHAIN_ID, key)
            versions = registry.versions_of_dataset(conn, dataset_uuid)
        assert sorted((v.range_start, v.range_end) for v in versions) == ranges  # exactly one each
        assert all(v.fake for v in versions)  # TRACE_CRYO_MODE=fake: every version is marked
        if key == "blocks":
            assert sum(v.row_count for v in versions) == to_block
        # one partition per epoch (here one: to_block < the default epoch), materialized
        # once with the version of every range
        keys = {range_partition_key(a, b) for a, b in epoch_windows(0, to_block, EPOCH)}
        assert set(instance.get_dynamic_partitions(partitions_def_name(name, key))) == keys
        assert instance.get_materialized_partitions(stream_asset_key(name, key)) == keys
        event = instance.get_latest_materialization_event(stream_asset_key(name, key))
        assert event is not None and event.asset_materialization is not None
        assert event.asset_materialization.metadata["dataset_versions"].value == {
            range_partition_key(v.range_start, v.range_end): str(v.dataset_version)
            for v in versions
        }
        assert event.asset_materialization.metadata["fake"].value is True  # shown in the UI


def _drive(
    rt: Runtime,
    instance: DagsterInstance,
    on_tick: Callable[[DriveReport], None] | None = None,
) -> DriveReport:
    """Drive fresh Definitions until idle; no run may fail and no task end dead."""
    report = drive_until_idle(
        rt, build_definitions(rt), instance, timeout=DRIVE_TIMEOUT_SECONDS, on_tick=on_tick
    )
    assert report.idle and report.failed_runs == 0 and report.dead_tasks == 0
    return report


@pytest.mark.parametrize("continue_seconds", [0, 60])
def test_max_inflight_is_never_exceeded(
    rt: Runtime,
    dagster_instance: DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    continue_seconds: int,
) -> None:
    """Caps hold whether the sensors launch every wave (continue 0) or a run that finished its
    batch plans and takes the next wave itself (the default): then far fewer runs do it all."""
    monkeypatch.setenv("TRACE_WORKER_CONTINUE_SECONDS", str(continue_seconds))
    rt = Runtime(load_settings())
    caps = {"blocks": (100, 3), "transactions": (250, 2)}
    _trace_lite("apply", "--file", str(_job_file(tmp_path, "cap", 2000, caps)))
    seen: list[dict[str, int]] = []

    def observe(_: DriveReport) -> None:
        counts = _inflight(rt, "cap")
        seen.append(counts)
        with rt.state() as conn:
            (js,) = status.job_status(conn, rt.settings.org_id, "cap")
        for s in js["streams"]:
            assert s["inflight"] <= caps[s["dataset_key"]][1], s
        for key, n in counts.items():
            assert n <= caps[key][1], (key, n)

    report = _drive(rt, dagster_instance, on_tick=observe)
    assert len(seen) == report.ticks
    with rt.state() as conn:
        (js,) = status.job_status(conn, rt.settings.org_id, "cap")
    assert {s["dataset_key"]: s["completed"] for s in js["streams"]} == {
        "blocks": 20,
        "transactions": 8,
    }
    assert all(s["fake_ranges"] == s["completed"] for s in js["streams"])
    assert "FAKE DATA: 28 committed range(s) are made-up" in _trace_lite("status")
    if continue_seconds == 0:  # one wave per run: at least 20 ranges / 3 inflight runs
        assert report.runs >= 20 // 3
    else:  # runs went on planning and taking the freed ranges themselves
        assert report.runs < 20 // 3

    # The tick callback sees state between ticks; the range timestamps (database clock) show
    # every instant in between: at no moment did a stream hold more than max_inflight ranges,
    # and the cap was reached, so the limit (not the workload) bounded concurrency.
    for key, (_, cap) in caps.items():
        spans = [(r.created_at, r.completed_at) for r in _ranges(rt, "cap") if r.dataset_key == key]
        assert _max_overlap(spans) == cap, key
    _assert_synced_once(rt, dagster_instance, "cap", 2000)


def test_pause_stops_scheduling_and_resume_continues(
    rt: Runtime, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    _trace_lite("apply", "--file", str(_job_file(tmp_path, "pz", 1200, {"blocks": (100, 2)})))
    at_pause: dict[str, object] = {}

    def pause_after_first_tick(report: DriveReport) -> None:
        if report.ticks == 1:
            _trace_lite("pause", "--job", "pz")
            at_pause.update(ranges=len(_ranges(rt, "pz")), cursors=_cursors(rt, "pz"))

    _drive(rt, dagster_instance, on_tick=pause_after_first_tick)
    assert at_pause["ranges"] == 2 and at_pause["cursors"] == {"blocks": 200}
    # more ticks while paused: nothing planned, nothing run (a fresh driver's first tick
    # re-adds the existing partitions, so report.planned is not a count of new ranges)
    assert _drive(rt, dagster_instance).runs == 0
    assert len(_ranges(rt, "pz")) == 2 and _cursors(rt, "pz") == {"blocks": 200}
    with rt.state() as conn:
        (js,) = status.job_status(conn, rt.settings.org_id, "pz")
    assert not js["enabled"] and "Paused" in {b["kind"] for b in js["streams"][0]["blocked"]}

    _trace_lite("resume", "--job", "pz")
    resumed = _drive(rt, dagster_instance)
    assert resumed.runs > 0
    _assert_synced_once(rt, dagster_instance, "pz", 1200)


def _wait_lease_expired(rt: Runtime, task_id: uuid.UUID) -> None:
    deadline = time.monotonic() + LEASE_WAIT_SECONDS
    while True:
        with rt.state() as conn:
            row = conn.execute(
                "SELECT status = 'running' AND lease_expires_at < now() FROM state.tasks "
                "WHERE task_id = %s",
                (task_id,),
            ).fetchone()
        if row == (True,):
            return
        assert time.monotonic() < deadline, "lease did not expire"
        time.sleep(0.05)


def test_restart_mid_sync_resumes_without_duplicates(
    rt: Runtime, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    streams = {"blocks": (200, 2), "transactions": (200, 2)}
    job_file = _job_file(tmp_path, "rs", 1200, streams)
    _trace_lite("apply", "--file", str(job_file))

    def crash_after_first_tick(report: DriveReport) -> None:
        if report.ticks == 1:
            raise Crash

    with pytest.raises(Crash):
        drive_until_idle(
            rt, build_definitions(rt), dagster_instance, on_tick=crash_after_first_tick
        )
    assert {r.status for r in _ranges(rt, "rs")} == {"completed"} and len(_ranges(rt, "rs")) == 4

    # Before dying, the old process planned the next ranges (their partitions never reached
    # Dagster) and a worker claimed one of them; its lease then lapsed.
    planned = dispatch_tick(rt).planned
    assert len(_ranges(rt, "rs")) == 8  # 4 new ranges, in one epoch per stream
    assert {(p.dataset_key, p.partition_key) for p in planned} == {
        (key, range_partition_key(0, EPOCH)) for key in streams
    }
    with rt.state() as conn:
        running = conn.execute(
            "SELECT task_id FROM state.chain_sync_scheduled_ranges "
            "WHERE status = 'scheduled' ORDER BY dataset_key, range_start LIMIT 1"
        ).fetchone()
        assert running is not None
        with conn.transaction():
            lifecycle.claim(conn, running[0], lease_seconds=0.2)
    _wait_lease_expired(rt, running[0])
    rt.close()  # the old process is gone; a fresh one starts on the same databases

    fresh = Runtime(load_settings())
    # Re-applying the same file mid-sync changes nothing; an edit keeps the cursors.
    assert "unchanged" in _trace_lite("apply", "--file", str(job_file))
    edited = _job_file(tmp_path, "rs", 1200, {"blocks": (200, 3), "transactions": (200, 2)})
    assert "updated" in _trace_lite("apply", "--file", str(edited))
    assert _cursors(fresh, "rs") == {"blocks": 800, "transactions": 800}
    assert len(_ranges(fresh, "rs")) == 8

    # New Definitions, same Dagster instance: every range ends committed exactly once.
    _drive(fresh, dagster_instance)
    _assert_synced_once(fresh, dagster_instance, "rs", 1200)
    with fresh.state() as conn:
        attempts = conn.execute(
            "SELECT attempt, outcome FROM state.task_attempts WHERE task_id = %s ORDER BY attempt",
            (running[0],),
        ).fetchall()
        tasks = conn.execute(
            "SELECT count(*) FROM state.tasks WHERE job_id = %s", (_job_id(fresh, "rs"),)
        ).fetchone()
    assert attempts == [(1, "expired"), (2, "succeeded")]
    assert tasks == (12,)  # one task per range, none planned twice

    # and driving again schedules nothing
    assert _drive(fresh, dagster_instance).runs == 0


def test_partitions_of_a_lost_dispatcher_tick_are_resynced(
    rt: Runtime, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    """Under the daemon the sensor cursor persists, so a tick whose result was lost (planned
    in Postgres, never applied to the instance) is healed by the periodic partition sync."""
    _trace_lite("apply", "--file", str(_job_file(tmp_path, "lost", 600, {"blocks": (100, 3)})))
    name = partitions_def_name("lost", "blocks")
    synced_at = float(int(time.time()))  # the cursor keeps whole seconds
    cursor = f"{PARTITIONS_SYNCED}:{synced_at:.0f}"  # the daemon's cursor from an earlier tick

    lost = dispatcher_result(rt, cursor, dagster_instance, now=synced_at)
    assert isinstance(lost, SensorResult) and len(_ranges(rt, "lost")) == 3  # never applied

    soon = dispatcher_result(rt, cursor, dagster_instance, now=synced_at + 1)
    assert dagster_instance.get_dynamic_partitions(name) == []
    assert not isinstance(soon, SensorResult) or not soon.dynamic_partitions_requests

    due = dispatcher_result(rt, cursor, dagster_instance, now=synced_at + PARTITIONS_RESYNC_SECONDS)
    assert isinstance(due, SensorResult) and due.cursor != cursor
    (request,) = due.dynamic_partitions_requests or []
    expected = [range_partition_key(0, EPOCH)]  # the job's one epoch (600 blocks)
    assert request.partitions_def_name == name and list(request.partition_keys or []) == expected
    dagster_instance.add_dynamic_partitions(name, expected)  # what the daemon does with it

    # only what is missing is requested: an in-sync instance gets nothing on the next sync
    again = dispatcher_result(
        rt, due.cursor, dagster_instance, now=synced_at + 2 * PARTITIONS_RESYNC_SECONDS
    )
    assert not isinstance(again, SensorResult) or not again.dynamic_partitions_requests
    _drive(rt, dagster_instance)
    _assert_synced_once(rt, dagster_instance, "lost", 600)
