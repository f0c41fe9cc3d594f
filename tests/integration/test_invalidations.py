"""Consuming data invalidations: once, replay-safe, stale events come back when re-produced."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from psycopg.types.json import Jsonb

from tests.integration.test_integrity import run_until_idle
from trace_core.chain_sync import store
from trace_core.chain_sync.yamlload import load_job_file
from trace_core.datasets import registry
from trace_core.db.migrate import migrate
from trace_core.db.queries import q
from trace_core.integrity.invalidations import consume_invalidations
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_core.sinks.consumer import write_rows
from trace_core.sinks.schemas import DESTINATIONS, AlertEventRow

JOB = """kind: chain_sync
name: inv
chain_id: 31337
mode: {kind: fixed_target, from_block: 0, to_block: 30}
streams:
  blocks: {cryo_dataset_name: blocks, rpc_pool: inv, chunk_size: 10, max_inflight: 3}
"""


def _event(block: int) -> AlertEventRow:
    return AlertEventRow(
        dedupe_key=f"whale:{block}",
        alert_name="whale",
        severity="critical",
        chain_id=31337,
        block_number=block,
        event_time=datetime.now(UTC),
        payload={"row": {"block_number": block}},
    )


def _write(rt: Runtime, blocks: list[int]) -> None:
    with rt.data() as conn:
        write_rows(
            conn,
            DESTINATIONS["alert_events"],
            [_event(b) for b in blocks],
            task_id=uuid.uuid4(),
            attempt=1,
        )


def _stale(rt: Runtime) -> dict[str, str | None]:
    with rt.data() as conn:
        rows = conn.execute("SELECT dedupe_key, stale_reason FROM data.alert_events").fetchall()
    return dict(rows)


def _repair_tasks(rt: Runtime) -> set[uuid.UUID]:
    with rt.state() as conn:
        rows = conn.execute("SELECT task_id FROM state.tasks WHERE payload ? 'repair'").fetchall()
    return {r[0] for r in rows}


def test_a_reorg_invalidation_is_consumed_once_and_replays_change_nothing(
    trace_env: Runtime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRACE_CRYO_MODE", "fake")
    rt = Runtime(load_settings())
    migrate(rt.dbs)
    job_file = tmp_path / "inv.yaml"
    job_file.write_text(JOB)
    spec, raw = load_job_file(job_file)
    with rt.state() as conn:
        store.apply_job(conn, rt.settings.org_id, spec, raw, str(job_file))
    assert run_until_idle(rt) == 3
    _write(rt, [5, 15, 25, 40])
    with rt.data() as conn:
        conn.execute(
            q("hot", "insert_invalidation"),
            {
                "org_id": rt.settings.org_id,
                "chain_id": 31337,
                "range_start": 12,
                "range_end": 31,
                "reason": "reorg",
                "details": Jsonb({}),
            },
        )
        # another chain's invalidation touches nothing of this one
        conn.execute(
            q("hot", "insert_invalidation"),
            {
                "org_id": rt.settings.org_id,
                "chain_id": 7,
                "range_start": 0,
                "range_end": 99,
                "reason": "reorg",
                "details": Jsonb({}),
            },
        )
        # nor does another org's reorg of this chain (its follower, its hot rows)
        conn.execute(
            q("hot", "insert_invalidation"),
            {
                "org_id": uuid.UUID("00000000-0000-0000-0000-0000000000bb"),
                "chain_id": 31337,
                "range_start": 0,
                "range_end": 99,
                "reason": "reorg",
                "details": Jsonb({}),
            },
        )

    report = consume_invalidations(rt)
    # a reorg orphans every block above its fork: block 40 too, beyond the follower's old tip
    assert report.consumed == 3 and report.stale_events == 3
    assert sorted((r.range_start, r.range_end) for r in report.repairs) == [(10, 20), (20, 30)]
    stale = _stale(rt)
    assert stale["whale:5"] is None
    assert "reorg" in str(stale["whale:15"]) and "[12, ...)" in str(stale["whale:25"])
    assert stale["whale:40"] is not None
    tasks = _repair_tasks(rt)
    assert len(tasks) == 2

    # consumed rows are not consumed again
    assert consume_invalidations(rt).consumed == 0
    # a crash after the state transaction but before the data one replays: same task ids
    with rt.data() as conn:
        conn.execute("UPDATE data.data_invalidations SET consumed_at = NULL")
    replay = consume_invalidations(rt)
    assert replay.consumed == 3 and not any(r.created for r in replay.repairs)
    assert _repair_tasks(rt) == tasks

    # the repairs re-sync exactly those ranges as new versions
    assert run_until_idle(rt) == 2
    with rt.state() as conn:
        versions = registry.versions_for_stream(conn, rt.settings.org_id, 31337, "blocks")
    assert [(v.range_start, ":repair-" in v.config_hash) for v in versions] == [
        (0, False),
        (10, True),
        (20, True),
    ]
    # an evaluation over the new data that finds an event again makes it fresh again
    _write(rt, [15])
    stale = _stale(rt)
    assert stale["whale:15"] is None and stale["whale:25"] is not None
    with rt.data() as conn:
        row = conn.execute(
            "SELECT revalidated_at IS NOT NULL FROM data.alert_events WHERE dedupe_key = 'whale:15'"
        ).fetchone()
    assert row == (True,)
