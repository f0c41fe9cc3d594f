"""Compaction of committed versions (``trace_core.datasets.compaction``) on real Postgres, a
local object store and the in-process Query Service (real DuckDB).

Covers: queries answer identically before and after, including a repaired range and a wide
old version that newer ones partly replace (exactness); readers skip the inputs at once and
retention collects them after the grace period, never a pinned one; a crash mid-compaction
(after the objects were published, before the registry row) leaves nothing visible and the
next pass finishes; a version committed while a compaction was in flight is never hidden by it
(stale: nothing registered) and a version committed after it still wins its blocks.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.test_query_service import blocks_table, publish
from trace_core.datasets import compaction, registry
from trace_core.datasets.compaction import CompactionStale, compact_dataset, plan_windows
from trace_core.datasets.retention import gc_versions
from trace_core.db.connection import Databases
from trace_core.errors import TraceError
from trace_core.query.client import local_user_token
from trace_core.query.service import QueryRequest, QueryService
from trace_core.settings import Settings
from trace_core.storage import LocalStore
from trace_core.tasks import create_task

CONFIG = "cryo_ingest.blocks:v1"
QUERIES = [
    "SELECT count(*), sum(gas_used), min(block_number), max(block_number) FROM blocks",
    "SELECT block_number, gas_used FROM blocks ORDER BY block_number",
]


@pytest.fixture
def store(settings: Settings) -> LocalStore:
    return LocalStore(settings.resolved_home() / "objects")


@pytest.fixture
def service(settings: Settings, dbs: Databases, store: LocalStore) -> Iterator[QueryService]:
    svc = QueryService(
        settings.model_copy(update={"query_workers": 0, "query_allow_fake": True}),
        dbs,
        store,
        hot_sources=None,
    )
    svc.open()
    yield svc
    svc.close()


@pytest.fixture
def state(dbs: Databases) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dbs.state_url, autocommit=True) as conn:
        yield conn


def answers(svc: QueryService, settings: Settings) -> list[list[list[Any]]]:
    token = local_user_token(settings)
    return [
        svc.query("user", token, QueryRequest(sql=text, max_rows=None))["rows"] for text in QUERIES
    ]


def history(settings: Settings, store: LocalStore, tmp: Path) -> dict[str, Any]:
    """[0, 400) in ranges of 50, an old wide [400, 600) partly replaced by newer [450, 500),
    and a repair of [100, 150) (another config, other values) that wins its blocks."""
    out: dict[str, Any] = {}
    for a in range(0, 400, 50):
        out[f"r{a}"] = publish(settings, store, tmp, blocks_table(a, a + 50), start=a, end=a + 50)
    out["wide"] = publish(settings, store, tmp, blocks_table(400, 600), start=400, end=600)
    out["narrow"] = publish(
        settings, store, tmp, blocks_table(450, 500, gas=7), start=450, end=500,
        config=CONFIG + ":v2",
    )  # fmt: skip
    out["repair"] = publish(
        settings, store, tmp, blocks_table(100, 150, gas=99), start=100, end=150,
        config=CONFIG + ":repair-1",
    )  # fmt: skip
    return out


def dataset_uuid(settings: Settings) -> uuid.UUID:
    from trace_core.datasets import ids

    return ids.dataset_uuid(settings.org_id, 1, "blocks")


def test_compaction_keeps_every_answer_and_retention_collects_the_inputs(
    settings: Settings, store: LocalStore, service: QueryService, state: Any, tmp_path: Path
) -> None:
    v = history(settings, store, tmp_path)
    duid = dataset_uuid(settings)
    before = answers(service, settings)
    assert before[0][0][0] == 600 and before[1][120] == [120, str(99 + 120)]  # the repair's rows

    # windows of 200: [0, 200) and [200, 400) of plain ranges (one repaired), [400, 600) of a
    # wide version clipped around a newer narrow one (another config: not compacted)
    planned = plan_windows(compaction.live_versions(state, duid), 200)
    assert [(w.start, w.end, len(w.inputs)) for w in planned] == [(0, 200, 4), (200, 400, 4)]
    dry = compact_dataset(state, store, duid, 200, org_id=settings.org_id, dry_run=True)
    assert len(dry.windows) == 2 and dry.committed == []

    report = compact_dataset(state, store, duid, 200, org_id=settings.org_id)
    assert [(c.record.range_start, c.record.range_end) for c in report.committed] == [
        (0, 200), (200, 400)
    ]  # fmt: skip
    assert [c.record.row_count for c in report.committed] == [200, 200]
    live = registry.versions_of_dataset(state, duid)  # readers' view: inputs skipped at once
    assert {(r.range_start, r.range_end) for r in live} == {
        (0, 200),
        (200, 400),
        (400, 600),
        (450, 500),
    }
    service.cache = type(service.cache)()  # a fresh process's view
    assert answers(service, settings) == before
    # a second pass finds nothing to do
    assert compact_dataset(state, store, duid, 200, org_id=settings.org_id).windows == []

    # retention: the 9 inputs (8 ranges + the superseded range under the repair) go after the
    # grace period, except one a queued task pins; the compacted versions stay
    pinned = v["r250"].dataset_version
    with state.transaction():
        grants = [{"dataset_version": str(pinned)}]
        create_task(
            state, task_id=uuid.uuid4(), operator="alert_evaluate", payload={"grants": grants}
        )
    assert gc_versions(state, store, settings.org_id, grace_seconds=3600).collected == []
    gone = gc_versions(state, store, settings.org_id, grace_seconds=0)
    assert len(gone.collected) == 8 and [s.record.dataset_version for s in gone.kept_pinned] == [
        pinned
    ]
    assert store.list(v["r0"].storage_prefix) == [] and store.list(v["r250"].storage_prefix)
    assert answers(service, settings) == before


def test_a_crash_mid_compaction_leaves_nothing_visible_and_the_next_pass_finishes(
    settings: Settings,
    store: LocalStore,
    service: QueryService,
    state: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    history(settings, store, tmp_path)
    duid = dataset_uuid(settings)
    before = answers(service, settings)

    class Crash(TraceError):
        pass

    def crash(conn: Any, committed: Any) -> None:  # objects published, row inserted, no commit
        raise Crash("killed")

    real = compaction.commit_version
    monkeypatch.setattr(
        compaction, "commit_version", lambda *a, **k: real(*a, **{**k, "on_registered": crash})
    )
    with pytest.raises(Crash):
        compact_dataset(state, store, duid, 200, org_id=settings.org_id, limit=1)
    monkeypatch.undo()
    # rolled back: no compacted row, no input marked; its prefix holds unregistered files
    assert {(r.range_start, r.range_end) for r in registry.versions_of_dataset(state, duid)} >= {
        (0, 50), (50, 100)
    }  # fmt: skip
    assert (0, 200) not in {
        (r.range_start, r.range_end) for r in registry.versions_of_dataset(state, duid)
    }
    assert answers(service, settings) == before
    report = compact_dataset(state, store, duid, 200, org_id=settings.org_id)
    assert len(report.committed) == 2 and report.stale == []
    service.cache = type(service.cache)()
    assert answers(service, settings) == before


def test_a_commit_during_compaction_is_never_hidden(
    settings: Settings,
    store: LocalStore,
    service: QueryService,
    state: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    history(settings, store, tmp_path)
    duid = dataset_uuid(settings)
    windows = plan_windows(compaction.live_versions(state, duid), 200)
    # a repair of [50, 100) commits after planning, before the compaction registers
    publish(settings, store, tmp_path, blocks_table(50, 100, gas=5), start=50, end=100,
            config=CONFIG + ":repair-1")  # fmt: skip
    with pytest.raises(CompactionStale):
        compaction.compact_window(state, store, windows[0], org_id=settings.org_id)
    after_stale = answers(service, settings)
    assert after_stale[1][60] == [60, "65"]  # the repair serves its blocks
    assert (0, 200) not in {
        (r.range_start, r.range_end) for r in registry.versions_of_dataset(state, duid)
    }

    # the next pass compacts the window with the repair in it; a later repair still wins
    compact_dataset(state, store, duid, 200, org_id=settings.org_id)
    service.cache = type(service.cache)()
    assert answers(service, settings) == after_stale
    publish(settings, store, tmp_path, blocks_table(150, 200, gas=3), start=150, end=200,
            config=CONFIG + ":repair-1")  # fmt: skip
    rows = answers(service, settings)[1]
    assert rows[160] == [160, "163"] and rows[60] == [60, "65"] and len(rows) == 600
    # the window has its compacted version: not compacted again, the repair serves on top
    assert compact_dataset(state, store, duid, 200, org_id=settings.org_id).windows == []
    assert answers(service, settings)[1] == rows


def test_tiers_compact_compacted_windows_again(
    settings: Settings, store: LocalStore, service: QueryService, state: Any, tmp_path: Path
) -> None:
    for a in range(0, 1000, 50):
        publish(settings, store, tmp_path, blocks_table(a, a + 50), start=a, end=a + 50)
    publish(settings, store, tmp_path, blocks_table(1000, 1050), start=1000, end=1050)  # tail
    duid = dataset_uuid(settings)
    before = answers(service, settings)
    report = compaction.compact_levels(
        state, store, duid, 100, levels=2, org_id=settings.org_id, file_rows=300
    )
    # tier 1: ten windows of 100; tier 2: one window of 1,000 over them (files of <= 300 rows)
    assert [(c.record.range_start, c.record.range_end) for c in report.committed] == [
        *((a, a + 100) for a in range(0, 1000, 100)),
        (0, 1000),
    ]
    assert (
        report.committed[-1].record.file_count == 4
        and report.committed[-1].record.row_count == 1000
    )
    live = registry.versions_of_dataset(state, duid)
    assert [(r.range_start, r.range_end) for r in live] == [(0, 1000), (1000, 1050)]
    service.cache = type(service.cache)()
    assert answers(service, settings) == before
    gone = gc_versions(state, store, settings.org_id, grace_seconds=0)
    assert len(gone.collected) == 30  # 20 ranges and the 10 tier-1 versions
    assert answers(service, settings) == before


def test_trace_lite_compact_compacts_a_jobs_epochs(
    trace_env: Any, settings: Settings, state: Any, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from trace_core.chain_sync import store as sync_store
    from trace_core.cli.main import cli

    job = tmp_path / "cjob.yaml"
    job.write_text(
        "kind: chain_sync\nname: cjob\nchain_id: 1\n"
        "mode: {kind: fixed_target, from_block: 0, to_block: 600}\nepoch_blocks: 200\n"
        "streams:\n  blocks: {cryo_dataset_name: blocks, rpc_pool: standard, chunk_size: 50, max_inflight: 2}\n"
    )
    with state.transaction():
        sync_store.apply_job_file(state, settings.org_id, job)
    objects = LocalStore(trace_env.settings.resolved_home() / "objects")
    history(settings, objects, tmp_path)
    dry = CliRunner().invoke(cli, ["compact", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "cjob/blocks (epochs of 200 blocks): would compact 2 window(s)" in " ".join(
        dry.output.split()
    )
    done = CliRunner().invoke(cli, ["compact", "--job", "cjob"])
    assert done.exit_code == 0, done.output
    assert "compacted 2 window(s) replacing 8 version(s)" in " ".join(done.output.split())
    live = registry.versions_of_dataset(state, dataset_uuid(settings))
    assert {(r.range_start, r.range_end) for r in live} >= {(0, 200), (200, 400)}


def test_broken_windows_are_left_alone_and_an_unreadable_input_is_skipped(
    settings: Settings, store: LocalStore, state: Any, tmp_path: Path
) -> None:
    v = history(settings, store, tmp_path)
    duid = dataset_uuid(settings)
    # [200, 400): a version failed its verification -> left for `verify --repair`
    state.execute(
        "UPDATE state.dataset_versions SET verified_at = now(), verified_passed = false "
        "WHERE dataset_version = %s",
        (v["r250"].dataset_version,),
    )
    # [0, 200): an input is not Parquet any more -> skipped, reported, the pass goes on
    (key,) = [i.key for i in store.list(v["r50"].storage_prefix) if i.key.endswith(".parquet")]
    path = Path(store.duckdb_uri(key))
    path.chmod(0o644)
    path.write_bytes(b"not parquet")
    report = compact_dataset(state, store, duid, 200, org_id=settings.org_id)
    assert [(w.start, w.end) for w in report.windows] == [(0, 200)]
    assert [(w.start, w.end) for w in report.failed] == [(0, 200)] and report.committed == []
    assert "1 skipped (unreadable input)" in report.line()
    live = {(r.range_start, r.range_end) for r in registry.versions_of_dataset(state, duid)}
    assert (0, 200) not in live and (200, 400) not in live and (50, 100) in live
