"""chain_sync apply + planner on a real Postgres: idempotency, slots, pause, follow_head."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.unit.test_chain_sync_spec import MALFORMED
from trace_core.chain_sync import planner, range_outcomes, store
from trace_core.chain_sync.head import record_head_observation
from trace_core.chain_sync.yamlload import parse_job
from trace_core.db.connection import Databases, connect
from trace_core.errors import (
    ChainSyncJobNotFound,
    ConfigError,
    DatasetConflict,
    InvalidJobFile,
    LeaseConflict,
    UnknownTask,
)
from trace_core.runtime import Runtime
from trace_core.tasks import RetryPolicy, claim, complete_failure, complete_success

ORG = "00000000-0000-0000-0000-000000000001"
TABLES = (
    "state.chain_sync_jobs",
    "state.chain_sync_streams",
    "state.chain_sync_cursor",
    "state.chain_sync_scheduled_ranges",
    "state.chain_head_observations",
    "state.datasets",
    "state.tasks",
    "state.outbox",
)


def fixed_job(
    *,
    name: str = "job",
    to_block: int = 10_000,
    from_block: int = 0,
    chunk: int = 1000,
    inflight: int = 3,
    streams: tuple[str, ...] = ("blocks",),
    extra: str = "",
) -> str:
    body = "".join(
        f"  {key}: {{cryo_dataset_name: {key}, rpc_pool: demo, chunk_size: {chunk}, max_inflight: {inflight}}}\n"
        for key in streams
    )
    return (
        f"kind: chain_sync\nname: {name}\nchain_id: 31337\n"
        f"mode: {{kind: fixed_target, from_block: {from_block}, to_block: {to_block}}}\n"
        f"{extra}streams:\n{body}"
    )


def follow_job(
    *, from_block: int = 0, tail_lag: int = 5, chunk: int = 40, inflight: int = 10
) -> str:
    return (
        "kind: chain_sync\nname: follow\nchain_id: 1\n"
        f"mode: {{kind: follow_head, from_block: {from_block}, tail_lag: {tail_lag}, "
        "head_poll_interval_seconds: 5, max_head_age_seconds: 30}\n"
        f"streams:\n  blocks: {{cryo_dataset_name: blocks, rpc_pool: standard, chunk_size: {chunk}, "
        f"max_inflight: {inflight}}}\n"
    )


@pytest.fixture
def conn(dbs: Databases) -> Iterator[psycopg.Connection[Any]]:
    with connect(dbs.state_url, autocommit=True) as c:
        yield c


def apply(conn: psycopg.Connection[Any], text: str, source: str = "job.yaml") -> store.ApplyResult:
    spec, raw = parse_job(text, source=source)
    return store.apply_job(conn, ORG, spec, raw, source)


def count(conn: psycopg.Connection[Any], table: str, where: str = "true") -> int:
    row = conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()
    assert row is not None
    return int(row[0])


def cursor_of(conn: psycopg.Connection[Any], job_id: uuid.UUID, key: str = "blocks") -> int:
    row = conn.execute(
        "SELECT next_block FROM state.chain_sync_cursor WHERE job_id = %s AND dataset_key = %s",
        (job_id, key),
    ).fetchone()
    assert row is not None
    return int(row[0])


def complete(conn: psycopg.Connection[Any], task_id: uuid.UUID) -> uuid.UUID:
    """Run a planned range's task to success the way the cryo operator's commit path does."""
    version = uuid.uuid5(uuid.NAMESPACE_URL, f"version:{task_id}")
    with conn.transaction():
        lease = claim(conn, task_id, lease_seconds=30)
    with conn.transaction():
        complete_success(conn, lease, {"dataset_version": str(version)})
        assert range_outcomes.mark_range_completed(conn, task_id, version) is True
    return version


def test_malformed_files_fail_and_write_nothing(
    conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    for case_id, doc, line, field, _fragment in MALFORMED:
        path = tmp_path / f"{case_id}.yaml"
        path.write_text(doc)
        with pytest.raises(ConfigError) as info:
            store.apply_job_file(conn, ORG, path)
        assert (
            info.value.file == str(path) and info.value.line == line and info.value.field == field
        )
    for table in TABLES:
        assert count(conn, table) == 0, table


def test_strict_apply_requires_pool_urls(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(fixed_job())
    with pytest.raises(InvalidJobFile, match="TRACE_RPC_POOL_DEMO_URL"):
        store.apply_job_file(conn, ORG, path, require_pools=True, environ={})
    assert count(conn, "state.chain_sync_jobs") == 0
    result = store.apply_job_file(conn, ORG, path, environ={})  # lenient by default
    assert result.created


def test_apply_is_idempotent(conn: psycopg.Connection[Any]) -> None:
    first = apply(conn, fixed_job(streams=("blocks", "logs")))
    assert (first.created, first.changed) == (True, True)
    before = conn.execute("SELECT updated_at, yaml_hash FROM state.chain_sync_jobs").fetchall()
    second = apply(conn, fixed_job(streams=("blocks", "logs")))
    assert (second.job_id, second.created, second.changed) == (first.job_id, False, False)
    assert (
        conn.execute("SELECT updated_at, yaml_hash FROM state.chain_sync_jobs").fetchall() == before
    )
    assert count(conn, "state.chain_sync_streams") == 2
    assert count(conn, "state.chain_sync_cursor", "next_block = 0") == 2
    datasets = {
        r[0]: r[1] for r in conn.execute("SELECT dataset_key, dataset_uuid FROM state.datasets")
    }
    assert datasets == {
        "blocks": store.stream_dataset_uuid(ORG, 31337, "blocks"),
        "logs": store.stream_dataset_uuid(ORG, 31337, "logs"),
    }
    job = store.get_job(conn, ORG, "job")
    assert job.job_id == first.job_id and job.source_file == "job.yaml" and job.enabled


def test_edit_keeps_cursor_and_paused_flag(conn: psycopg.Connection[Any]) -> None:
    job_id = apply(conn, fixed_job(streams=("blocks", "logs"))).job_id
    planner.plan_tick(conn, org_id=ORG)
    assert cursor_of(conn, job_id, "blocks") == 3000
    store.set_enabled(conn, ORG, "job", False)

    # edit: more inflight, drop logs, add transactions
    edited = apply(conn, fixed_job(inflight=5, streams=("blocks", "transactions")))
    assert (edited.job_id, edited.created, edited.changed) == (job_id, False, True)
    job = store.get_job(conn, ORG, job_id)
    assert not job.enabled
    assert cursor_of(conn, job_id, "blocks") == 3000
    assert cursor_of(conn, job_id, "transactions") == 0
    active = {s.dataset_key: s.max_inflight for s in store.list_streams(conn, ORG, "job")}
    assert active == {"blocks": 5, "transactions": 5}
    everything = {
        s.dataset_key: s.active for s in store.list_streams(conn, ORG, "job", include_inactive=True)
    }
    assert everything == {"blocks": True, "logs": False, "transactions": True}

    # re-adding logs continues from its cursor; a lower from_block never moves cursors back
    apply(conn, fixed_job(streams=("blocks", "logs"), from_block=0))
    assert cursor_of(conn, job_id, "logs") == 3000
    # a higher from_block moves cursors forward
    apply(conn, fixed_job(streams=("blocks", "logs"), from_block=4000))
    assert cursor_of(conn, job_id, "blocks") == 4000 and cursor_of(conn, job_id, "logs") == 4000
    assert not store.get_job(conn, ORG, job_id).enabled


def test_edit_cannot_change_chain_or_dataset_in_place(conn: psycopg.Connection[Any]) -> None:
    apply(conn, fixed_job(streams=("blocks",)))
    before = conn.execute("SELECT yaml_hash, spec FROM state.chain_sync_jobs").fetchall()
    changed_chain = fixed_job().replace("chain_id: 31337", "chain_id: 1")
    with pytest.raises(InvalidJobFile) as info:
        apply(conn, changed_chain)
    assert str(info.value).startswith("job.yaml:3: chain_id: cannot change from 31337")
    changed_dataset = fixed_job().replace("cryo_dataset_name: blocks", "cryo_dataset_name: logs")
    with pytest.raises(InvalidJobFile) as info:
        apply(conn, changed_dataset)
    assert info.value.field == "streams.blocks.cryo_dataset_name" and info.value.line == 6
    assert conn.execute("SELECT yaml_hash, spec FROM state.chain_sync_jobs").fetchall() == before


def test_planner_is_idempotent_under_restarts(conn: psycopg.Connection[Any]) -> None:
    job_id = apply(conn, fixed_job(inflight=3, extra="max_attempts: 4\n")).job_id
    first = planner.plan_tick(conn, org_id=ORG)
    assert [(p.range_start, p.range_end) for p in first.planned] == [
        (0, 1000),
        (1000, 2000),
        (2000, 3000),
    ]
    assert [p.partition_key for p in first.planned][0] == "000000000000-000000001000"
    second = planner.plan_tick(conn, org_id=ORG)
    assert second.planned == []
    assert count(conn, "state.outbox") == 3
    assert count(conn, "state.tasks", "operator = 'cryo_ingest' AND max_attempts = 4") == 3
    assert cursor_of(conn, job_id) == 3000

    p = first.planned[0]
    assert p.task_id == planner.range_task_id(job_id, "blocks", 0, 1000)
    row = conn.execute(
        "SELECT payload, job_id FROM state.tasks WHERE task_id = %s", (p.task_id,)
    ).fetchone()
    assert row is not None
    assert row[0] == {
        "operator": "cryo_ingest",
        "chain_id": 31337,
        "job_id": str(job_id),
        "job_name": "job",
        "dataset_key": "blocks",
        "dataset_uuid": str(store.stream_dataset_uuid(ORG, 31337, "blocks")),
        "cryo_dataset_name": "blocks",
        "rpc_pool": "demo",
        "range_start": 0,
        "range_end": 1000,
        "config_hash": "cryo_ingest.blocks:v1",
        "cryo_options": {},
    }
    assert row[1] == job_id
    assert range_outcomes.range_for_task(conn, p.task_id) == range_outcomes.ScheduledRange(
        job_id=job_id,
        org_id=uuid.UUID(ORG),
        job_name="job",
        chain_id=31337,
        dataset_key="blocks",
        range_start=0,
        range_end=1000,
        task_id=p.task_id,
        status="scheduled",
        dataset_version=None,
        dataset_uuid=store.stream_dataset_uuid(ORG, 31337, "blocks"),
        config_hash="cryo_ingest.blocks:v1",
    )
    assert range_outcomes.range_for_task(conn, uuid.uuid4()) is None


def test_max_inflight_is_never_exceeded(conn: psycopg.Connection[Any]) -> None:
    job_id = apply(conn, fixed_job(to_block=5500, chunk=500, inflight=3)).job_id
    seen: list[tuple[int, int]] = []
    for _ in range(20):
        result = planner.plan_tick(conn, org_id=ORG)
        seen += [(p.range_start, p.range_end) for p in result.planned]
        open_ranges = conn.execute(
            "SELECT task_id FROM state.chain_sync_scheduled_ranges WHERE status = 'scheduled' ORDER BY range_start"
        ).fetchall()
        assert len(open_ranges) <= 3
        if not open_ranges:
            break
        complete(conn, open_ranges[0][0])  # free one slot per round
    assert seen == [(s, min(s + 500, 5500)) for s in range(0, 5500, 500)]
    assert cursor_of(conn, job_id) == 5500
    assert count(conn, "state.chain_sync_scheduled_ranges", "status = 'completed'") == 11
    assert planner.plan_tick(conn, org_id=ORG).planned == []


def test_pause_stops_planning_and_resume_continues(conn: psycopg.Connection[Any]) -> None:
    job_id = apply(conn, fixed_job(inflight=2)).job_id
    first = planner.plan_tick(conn, org_id=ORG).planned
    assert len(first) == 2
    assert store.set_enabled(conn, ORG, "job", False) == job_id
    with pytest.raises(LeaseConflict, match="paused"), conn.transaction():
        claim(conn, first[0].task_id, lease_seconds=30)
    assert planner.plan_tick(conn, org_id=ORG).planned == []
    assert cursor_of(conn, job_id) == 2000

    outbox_before = count(conn, "state.outbox")
    assert store.set_enabled(conn, ORG, str(job_id), True) == job_id
    assert count(conn, "state.outbox") == outbox_before + 2  # queued tasks re-woken
    complete(conn, first[0].task_id)
    assert [(p.range_start, p.range_end) for p in planner.plan_tick(conn, org_id=ORG).planned] == [
        (2000, 3000)
    ]


def test_unknown_job_is_a_typed_error(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(ChainSyncJobNotFound, match="chain_sync job not found"):
        store.set_enabled(conn, ORG, "nope", False)
    with pytest.raises(ChainSyncJobNotFound):
        store.pause_job(conn, ORG, str(uuid.uuid4()))
    apply(conn, fixed_job())
    with pytest.raises(ChainSyncJobNotFound):  # another org does not see it
        store.get_job(conn, "00000000-0000-0000-0000-000000000002", "job")


def test_follow_head_plans_to_head_minus_tail_lag(conn: psycopg.Connection[Any]) -> None:
    job_id = apply(conn, follow_job(tail_lag=5, chunk=40)).job_id
    assert planner.plan_tick(conn, org_id=ORG).planned == []  # no head yet: fail closed
    assert store.get_job(conn, ORG, job_id).last_error_kind == planner.MISSING_HEAD

    with conn.transaction():
        record_head_observation(conn, org_id=ORG, chain_id=1, rpc_pool="standard", head_block=100)
    planned = planner.plan_tick(conn, org_id=ORG).planned
    assert [(p.range_start, p.range_end) for p in planned] == [(0, 40), (40, 80), (80, 96)]
    assert planner.plan_tick(conn, org_id=ORG).planned == []
    assert cursor_of(conn, job_id) == 96
    assert store.get_job(conn, ORG, job_id).last_error_kind is None

    with conn.transaction():
        record_head_observation(conn, org_id=ORG, chain_id=1, rpc_pool="standard", head_block=130)
    planned = planner.plan_tick(conn, org_id=ORG).planned
    assert [(p.range_start, p.range_end) for p in planned] == [(96, 126)]


def test_stale_head_plans_nothing(conn: psycopg.Connection[Any]) -> None:
    job_id = apply(conn, follow_job()).job_id
    db_now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    with conn.transaction():
        record_head_observation(
            conn,
            org_id=ORG,
            chain_id=1,
            rpc_pool="standard",
            head_block=1000,
            observed_at=db_now - timedelta(seconds=31),
        )
    result = planner.plan_tick(conn, org_id=ORG)
    assert result.planned == []
    assert result.streams[0].blocked_kind == planner.STALE_HEAD
    job = store.get_job(conn, ORG, job_id)
    assert job.last_error_kind == planner.STALE_HEAD and "over max_head_age_seconds=30" in (
        job.last_error_message or ""
    )
    assert cursor_of(conn, job_id) == 0


def test_dead_range_stops_the_stream_until_revived(conn: psycopg.Connection[Any]) -> None:
    apply(conn, fixed_job(inflight=2))
    first = planner.plan_tick(conn, org_id=ORG).planned
    with conn.transaction():
        lease = claim(conn, first[0].task_id, lease_seconds=30)
    with conn.transaction():
        assert (
            complete_failure(conn, lease, error="boom", fatal=True, policy=RetryPolicy(0, 0))
            == "dead"
        )
        range_outcomes.on_task_dead(conn, lease)
    complete(conn, first[1].task_id)
    result = planner.plan_tick(conn, org_id=ORG)
    assert result.planned == [] and result.streams[0].blocked_kind == planner.DEAD_RANGES
    assert range_outcomes.mark_range_dead(conn, first[0].task_id) is False  # already dead
    with conn.transaction():
        assert range_outcomes.revive_range(conn, first[0].task_id) is True
    assert (
        len(planner.plan_tick(conn, org_id=ORG).planned) == 1
    )  # one slot: the revived range holds the other


def test_completion_is_idempotent_and_fenced_by_version(conn: psycopg.Connection[Any]) -> None:
    apply(conn, fixed_job(inflight=1))
    (p,) = planner.plan_tick(conn, org_id=ORG).planned
    version = complete(conn, p.task_id)
    assert range_outcomes.mark_range_completed(conn, p.task_id, version) is False
    with pytest.raises(DatasetConflict):
        range_outcomes.mark_range_completed(conn, p.task_id, uuid.uuid4())
    with pytest.raises(UnknownTask):
        range_outcomes.mark_range_completed(conn, uuid.uuid4(), version)
    with pytest.raises(UnknownTask):
        range_outcomes.mark_range_dead(conn, uuid.uuid4())
    ranges = store.list_ranges(conn, p.job_id, "blocks")
    assert [(r.range_start, r.status, r.dataset_version) for r in ranges] == [
        (0, "completed", version)
    ]


def test_concurrent_planners_never_double_plan(
    dbs: Databases, conn: psycopg.Connection[Any]
) -> None:
    apply(conn, fixed_job(to_block=100_000, chunk=100, inflight=50, streams=("blocks", "logs")))
    results: list[planner.PlanResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with connect(dbs.state_url, autocommit=True) as c:
                results.append(planner.plan_tick(c, org_id=ORG, limit=7))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    planned = [(p.dataset_key, p.range_start) for r in results for p in r.planned]
    assert len(planned) == len(set(planned)) == 4 * 7 * 2
    assert (
        count(conn, "state.chain_sync_scheduled_ranges")
        == len(planned)
        == count(conn, "state.outbox")
    )


def _follow(from_block: int, head: int | None, age: float | None) -> planner.Eligibility:
    return planner.eligible_end(
        mode="follow_head",
        from_block=from_block,
        to_block=None,
        tail_lag=5,
        max_head_age_seconds=30,
        head_block=head,
        head_age_seconds=age,
    )


def test_pure_decisions() -> None:
    assert _follow(0, 100, 1.0) == planner.Eligibility(96)
    assert _follow(500, 100, 1.0) == planner.Eligibility(500)
    assert _follow(0, None, None).blocked_kind == planner.MISSING_HEAD
    assert _follow(0, 100, 30.5).blocked_kind == planner.STALE_HEAD
    assert _follow(0, 100, 30.0).end == 96
    fixed = planner.eligible_end(
        mode="fixed_target",
        from_block=0,
        to_block=7,
        tail_lag=None,
        max_head_age_seconds=None,
        head_block=None,
        head_age_seconds=None,
    )
    assert fixed == planner.Eligibility(7)
    assert planner.plan_ranges(cursor=0, end=96, chunk_size=40, slots=10, limit=10) == [
        (0, 40),
        (40, 80),
        (80, 96),
    ]
    assert planner.plan_ranges(cursor=0, end=96, chunk_size=40, slots=2, limit=10) == [
        (0, 40),
        (40, 80),
    ]
    assert planner.plan_ranges(cursor=0, end=96, chunk_size=40, slots=10, limit=1) == [(0, 40)]
    assert planner.plan_ranges(cursor=96, end=96, chunk_size=40, slots=10, limit=10) == []
    assert planner.plan_ranges(cursor=0, end=96, chunk_size=40, slots=-3, limit=10) == []
    assert planner.range_partition_key(46_000_000, 46_005_000) == "000046000000-000046005000"
    assert planner.parse_partition_key("000000000000-000000001000") == (0, 1000)
    with pytest.raises(ValueError):
        planner.parse_partition_key("0,1000")


def test_a_pool_without_url_blocks_the_stream_unless_fake_is_explicit(
    conn: psycopg.Connection[Any],
) -> None:
    """Real extraction is the default: a fixed_target stream whose pool has no URL is not
    planned (its ranges could only fail; fake data is never a fallback) and the job says why;
    once the URL is set it plans, and TRACE_CRYO_MODE=fake plans without one."""
    from trace_core.settings import Settings

    job_id = apply(conn, fixed_job(inflight=2)).job_id
    real = planner.pool_url_check(Settings(), {})
    result = planner.plan_tick(conn, org_id=ORG, pool_check=real)
    assert result.planned == []
    (stream,) = result.streams
    assert stream.blocked_kind == "MissingRpcUrl"
    assert "TRACE_RPC_POOL_DEMO_URL is not set" in (stream.blocked_message or "")
    job = store.get_job(conn, ORG, job_id)
    assert job.last_error_kind == "MissingRpcUrl" and count(conn, "state.tasks") == 0

    with_url = planner.pool_url_check(Settings(), {"TRACE_RPC_POOL_DEMO_URL": "http://node"})
    assert len(planner.plan_tick(conn, org_id=ORG, pool_check=with_url).planned) == 2
    assert store.get_job(conn, ORG, job_id).last_error_kind is None  # cleared once resolved
    fake = planner.pool_url_check(Settings(cryo_mode="fake"), {})
    assert fake("demo") is None


def test_a_worker_runs_take_plans_only_the_streams_whose_ranges_ended(
    conn: psycopg.Connection[Any], trace_env: Runtime
) -> None:
    """Both streams have room after their ranges complete, but a take scoped to the blocks
    stream (whose range its run saw end) plans blocks only; the dispatcher's tick
    (``plan_orgs``) plans the other stream."""
    from trace_core.engine import orgs

    settings = trace_env.settings.model_copy(update={"cryo_mode": "fake"})
    rt = Runtime(settings, trace_env.dbs).for_org(ORG)
    job_id = apply(conn, fixed_job(inflight=1, streams=("blocks", "logs"))).job_id
    first = planner.plan_tick(conn, org_id=ORG).planned
    assert sorted(p.dataset_key for p in first) == ["blocks", "logs"]
    for p in first:
        complete(conn, p.task_id)
    with rt.state() as state:
        scoped = orgs.plan_streams(rt, state, [(ORG, str(job_id), "blocks")])
        assert [(p.dataset_key, p.range_start) for _, p in scoped] == [("blocks", 1000)]
        assert cursor_of(conn, job_id, "logs") == 1000
        every = orgs.plan_orgs(rt, state, orgs.orgs_with_work(state))
    assert [(p.dataset_key, p.range_start) for _, p in every] == [("logs", 1000)]
