"""The integrity check in Dagster: a partitioned asset check per stream, the scheduled
``trace_integrity`` sensor requesting pass runs (bounded steps, every epoch partition each pass),
and the check run from the UI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from dagster import (
    AssetCheckKey,
    AssetSelection,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    define_asset_job,
)

from tests.dagster.ui_graphql import check_partitions, ui_context
from trace_core.chain_sync import store
from trace_core.chain_sync.yamlload import load_job_file
from trace_core.datasets import registry
from trace_core.db.migrate import migrate
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_dagster.definitions import build_definitions
from trace_dagster.driver import drive_until_idle
from trace_dagster.integrity import CHECK_NAME, INTEGRITY_JOB, SENSOR_NAME
from trace_dagster.partitions import stream_asset_key
from trace_dagster.sensors.integrity import NEW_RANGES_GAP_SECONDS, integrity_request

JOB = """kind: chain_sync
name: chk
chain_id: 31337
epoch_blocks: 20
mode: {kind: fixed_target, from_block: 0, to_block: 50}
streams:
  blocks: {cryo_dataset_name: blocks, rpc_pool: chk, chunk_size: 10, max_inflight: 5}
"""
# epoch partitions of 20 blocks: two ranges each, the last one range (the job ends at 50)
KEYS = [f"{s:012d}-{s + 20:012d}" for s in range(0, 50, 20)]


@pytest.fixture
def synced(
    trace_env: Runtime,
    dagster_instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Runtime:
    monkeypatch.setenv("TRACE_CRYO_MODE", "fake")
    monkeypatch.setenv("TRACE_INTEGRITY_RANGES_PER_TICK", "2")
    rt = Runtime(load_settings())
    migrate(rt.dbs)
    job_file = tmp_path / "chk.yaml"
    job_file.write_text(JOB)
    spec, raw = load_job_file(job_file)
    with rt.state() as conn:
        store.apply_job(conn, rt.settings.org_id, spec, raw, str(job_file))
    report = drive_until_idle(rt, build_definitions(rt), dagster_instance, timeout=120)
    assert report.idle and report.failed_runs == 0
    return rt


def _statuses(instance: DagsterInstance) -> dict[str | None, str]:
    key = AssetCheckKey(stream_asset_key("chk", "blocks"), CHECK_NAME)
    out: dict[str | None, str] = {}
    for rec in reversed(
        instance.event_log_storage.get_asset_check_execution_history(key, limit=100)
    ):
        out[rec.partition] = rec.status.value  # oldest first: the newest wins
    return out


def _tamper(rt: Runtime, start: int) -> None:
    with rt.state() as conn:
        [rec] = [
            r
            for r in registry.versions_for_stream(conn, rt.settings.org_id, 31337, "blocks")
            if r.range_start == start
        ]
    key = next(o.key for o in rt.store.list(rec.storage_prefix) if o.key.endswith(".parquet"))
    path = Path(rt.store.duckdb_uri(key))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_scheduled_sensor_runs_passes_that_check_every_partition(
    synced: Runtime, dagster_instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = synced
    defs = build_definitions(rt)
    assert defs.resolve_sensor_def(SENSOR_NAME)
    assert AssetCheckKey(stream_asset_key("chk", "blocks"), CHECK_NAME) in {
        k
        for c in defs.asset_checks or []
        for k in c.check_keys  # type: ignore[union-attr]
    }
    # committed ranges no pass has seen: a fresh sensor requests its first pass at once
    now = time.time()
    first = integrity_request(rt, None, dagster_instance, now=now)
    (request,) = first.run_requests or []
    assert "committed_since_the_last_pass" in request.tags["trace/integrity_reason"]
    assert json.loads(str(first.cursor)) == {
        "next_pass_at": now + rt.settings.integrity_interval_seconds,
        "last_pass_at": now,
    }
    soon = integrity_request(rt, first.cursor, dagster_instance, now=now + 1)
    assert not soon.run_requests and "next integrity pass" in str(soon.skip_reason)
    # nothing committed since: no pass before the interval, however long the gap
    later = integrity_request(rt, first.cursor, dagster_instance, now=now + NEW_RANGES_GAP_SECONDS)
    assert not later.run_requests

    _tamper(rt, 20)
    job = defs.resolve_job_def(INTEGRITY_JOB)
    cursor: str | None = json.dumps({"next_pass_at": 0})
    for n, now in enumerate((5000.0, 5000.0 + rt.settings.integrity_interval_seconds)):
        due = integrity_request(rt, cursor, dagster_instance, now=now)
        (request,) = due.run_requests or []
        assert request.tags["trace/kind"] == "maintenance"
        cursor = due.cursor
        assert cursor is not None
        assert json.loads(cursor)["next_pass_at"] == now + rt.settings.integrity_interval_seconds
        # until the next pass is due, ticks skip
        idle = integrity_request(rt, cursor, dagster_instance, now=now + 1)
        assert not idle.run_requests and "next integrity pass" in str(idle.skip_reason)
        # the pass run (5 ranges in steps of 2) reports every partition; a broken one fails it
        run = job.execute_in_process(
            instance=dagster_instance, tags=dict(request.tags), raise_on_error=False
        )
        assert not run.success
        evaluations = [
            entry.get_dagster_event().asset_check_evaluation_data
            for entry in dagster_instance.all_logs(
                run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
            )
        ]
        # every pass reports every epoch again, once, over the ranges it checked in it
        assert [e.partition for e in evaluations] == KEYS, n
        assert [e.metadata["ranges_checked"].value for e in evaluations] == [2, 2, 1]
        assert evaluations[1].metadata["failed_ranges"].value == "000000000020-000000000030"
        statuses = _statuses(dagster_instance)
        assert {k for k, v in statuses.items() if v == "FAILED"} == {KEYS[1]}
        assert {k for k, v in statuses.items() if v == "SUCCEEDED"} == set(KEYS) - {KEYS[1]}
        # the check's Partitions tab (what the UI loads) shows the same verdicts
        with ui_context(dagster_instance, rt, monkeypatch) as ui:
            tab = check_partitions(ui, stream_asset_key("chk", "blocks"), CHECK_NAME)
        assert tab["failedPartitions"] == {KEYS[1]}
        assert tab["succeededPartitions"] == set(KEYS) - {KEYS[1]}


def test_check_run_from_the_ui_updates_every_partition(
    synced: Runtime, dagster_instance: DagsterInstance
) -> None:
    rt = synced
    _tamper(rt, 40)
    defs = build_definitions(rt)
    check_job = define_asset_job("integrity_now", selection=AssetSelection.all_asset_checks())
    run_defs = Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        jobs=[check_job],
        resources=defs.resources,
    )
    result = run_defs.resolve_job_def("integrity_now").execute_in_process(
        instance=dagster_instance, raise_on_error=False
    )
    assert not result.success  # a broken range fails the run, naming the repair command
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "--repair" in str(failure.event_specific_data.error.message)  # type: ignore[union-attr]
    statuses = _statuses(dagster_instance)
    assert statuses[KEYS[2]] == "FAILED"
    assert all(statuses[k] == "SUCCEEDED" for k in KEYS[:2])
