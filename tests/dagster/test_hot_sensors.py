"""The hot-path sensors on a real anvil: follower ticks, compactor ticks, hot-only relations in the
Query Service, blocked reasons in the tick and in ``trace-lite status``."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from dagster import (
    AssetObservation,
    DagsterInstance,
    DefaultSensorStatus,
    Definitions,
)

from tests.integration.test_query_service import serving
from trace_core.alerts.spec import parse_alert
from trace_core.alerts.store import apply_alert
from trace_core.chain_sync import store
from trace_core.chain_sync.head import record_head_observation
from trace_core.chain_sync.status import collect_status
from trace_core.chain_sync.yamlload import parse_job
from trace_core.cli.main import cli
from trace_core.datasets import registry
from trace_core.engine.dispatcher import dispatch_tick
from trace_core.engine.service_steps import compactor_step, follower_step
from trace_core.errors import InvalidJobFile
from trace_core.query.app import create_app
from trace_core.query.client import local_user_token
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_dagster.definitions import build_definitions
from trace_dagster.driver import drive_until_idle
from trace_dagster.jobs import trace_worker
from trace_dagster.resources import TraceResource
from trace_dagster.sensors.dispatcher import dispatcher_sensor
from trace_dagster.sensors.worker import worker_sensor
from trace_dagster.service_runs import asset_observation
from trace_lite.devtools.devchain import DevChain

CHAIN_ID = 31337


def job_yaml(name: str, pool: str, *, to_block: int, chunk: int, hot: str, extra: str = "") -> str:
    streams = "".join(
        f"  {ds}: {{cryo_dataset_name: {ds}, rpc_pool: {pool}, chunk_size: {chunk}, max_inflight: 4}}\n"
        for ds in ("blocks", "transactions", "logs")
    )
    return (
        f"kind: chain_sync\nname: {name}\nchain_id: {CHAIN_ID}\n"
        f"mode: {{kind: fixed_target, from_block: 0, to_block: {to_block}}}\n"
        f"streams:\n{streams}hot: {hot}\n{extra}"
    )


def apply(rt: Runtime, text: str) -> store.ApplyResult:
    spec, raw = parse_job(text, source="job.yaml")
    with rt.state() as conn:
        return store.apply_job(conn, rt.settings.org_id, spec, raw, "job.yaml")


LOG = logging.getLogger("test_hot_sensors")


def hot_cursor(rt: Runtime) -> int | None:
    with rt.state() as conn:
        row = conn.execute(
            "SELECT block_number FROM state.hot_follower_cursors WHERE chain_id = %s", (CHAIN_ID,)
        ).fetchone()
    return None if row is None else int(row[0])


def follow_until(
    rt: Runtime, instance: DagsterInstance, done: Callable[[], bool], timeout: float = 30.0
) -> int:
    """Tick the follower until ``done()``; returns the number of ticks."""
    deadline = time.monotonic() + timeout
    cursor: str | None = None
    ticks = 0
    while not done():
        assert time.monotonic() < deadline, f"follower did not get there (cursor {hot_cursor(rt)})"
        result = follower_step(rt, cursor, LOG)
        assert result.worked, result.summary
        assert f"chain {CHAIN_ID}" in result.summary
        cursor = result.cursor
        ticks += 1
    return ticks


def assert_hot_equals_chain(rt: Runtime, chain: DevChain, start: int, end: int) -> None:
    """Hot blocks are exactly ``start..end`` (no gap, no extra) with the chain's hashes."""
    with psycopg.connect(rt.dbs.data_url) as conn:
        rows = conn.execute(
            "SELECT block_number, block_hash FROM data.hot_blocks WHERE chain_id = %s "
            "ORDER BY block_number",
            (CHAIN_ID,),
        ).fetchall()
    assert [n for n, _ in rows] == list(range(start, end + 1))
    for n, stored in rows:
        block = chain.rpc.get_block_by_number(n, False)
        assert block is not None and bytes(stored).hex() == str(block["hash"])[2:], n


@pytest.fixture
def service(trace_env: Runtime) -> Iterator[Callable[..., list[Any]]]:
    """The Query Service (default hot sources) under a real uvicorn on a loopback port."""
    rt = Runtime(load_settings())
    token = local_user_token(rt.settings)
    with serving(create_app(rt.settings, rt.dbs, rt.store)) as client:

        def rows(sql: str, **body: Any) -> list[Any]:
            response = client.post(
                "/v1/query",
                json={"sql": sql, **body},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status_code == 200, response.text
            return list(response.json()["rows"])

        yield rows


COUNTS = (
    "SELECT (SELECT count(*) FROM blocks) AS b, (SELECT count(*) FROM transactions) AS t, "
    "(SELECT count(*) FROM logs) AS l, (SELECT min(block_number) FROM blocks) AS lo, "
    "(SELECT max(block_number) FROM blocks) AS hi"
)


def test_follower_sensor_follows_a_mining_chain_into_hot_only_relations(
    trace_env: Runtime,
    dagster_instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    service: Callable[..., list[Any]],
) -> None:
    with DevChain.start(blocks=40, seed=5) as chain:
        monkeypatch.setenv("TRACE_RPC_POOL_TIP_URL", chain.rpc_url)
        rt = trace_env
        apply(
            rt,
            job_yaml(
                "tip", "tip", to_block=25, chunk=25, hot="{rpc_pool: tip, max_blocks_per_tick: 6}"
            ),
        )

        # anvil mines while the sensor ticks: each tick takes at most 6 blocks
        stop = threading.Event()

        def miner() -> None:
            for _ in range(30):
                if stop.wait(0.03):
                    return
                chain.mine(1)

        mining = threading.Thread(target=miner, daemon=True)
        mining.start()
        try:
            ticks = follow_until(rt, dagster_instance, lambda: (hot_cursor(rt) or 0) >= 60)
        finally:
            stop.set()
            mining.join(timeout=10)
        assert ticks >= 6  # bounded per tick: (60 - 25 + 1) / 6
        head = chain.head()
        follow_until(rt, dagster_instance, lambda: hot_cursor(rt) == head)
        # the follower starts at the job's to_block and leaves no gap up to the head
        assert_hot_equals_chain(rt, chain, 25, head)

        # status: cursor, observed head (recorded by the follower), lag, nothing blocked
        with rt.state() as conn:
            (job,) = collect_status(conn, rt.settings.org_id, "tip")
        assert job.hot is not None
        assert (job.hot.start_block, job.hot.first_block, job.hot.cursor) == (25, 25, head)
        assert (job.hot.observed_head, job.hot.lag_blocks, job.hot.blocked) == (head, 0, [])

        # no cold version exists: blocks/transactions/logs are the hot rows alone
        with rt.state() as conn:
            assert registry.versions_for_stream(conn, rt.settings.org_id, CHAIN_ID, "blocks") == []
        expected = [
            head + 1 - 25,
            chain.count_transactions(25, head + 1),
            chain.count_logs(25, head + 1),
            25,
            head,
        ]
        assert expected[1] > 0 and expected[2] > 0
        assert service(COUNTS) == [expected]
        assert service(COUNTS, job="tip") == [expected]
        typed = service("SELECT typeof(gas_used), typeof(block_hash) FROM blocks LIMIT 1")
        assert typed == [["UBIGINT", "BLOB"]]  # cryo's Parquet types, as cold rows have


def test_compactor_sensor_moves_final_ranges_to_cold_and_counts_hold(
    trace_env: Runtime,
    dagster_instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    service: Callable[..., list[Any]],
) -> None:
    monkeypatch.setenv("TRACE_HOT_COMPACT_RANGE_SIZE", "20")
    with DevChain.start(blocks=90, seed=9) as chain:
        monkeypatch.setenv("TRACE_RPC_POOL_FED_URL", chain.rpc_url)
        rt = Runtime(load_settings())
        apply(
            rt,
            job_yaml(
                "fed",
                "fed",
                to_block=40,
                chunk=20,
                hot="{rpc_pool: fed}",
                extra="finality_depth: 5\n",
            ),
        )
        # chain_sync commits [0, 40) through Dagster runs (the hot sensors are left out here)
        cold_defs = Definitions(
            jobs=[trace_worker],
            sensors=[dispatcher_sensor, worker_sensor],
            resources={"trace": TraceResource()},
        )
        report = drive_until_idle(rt, cold_defs, dagster_instance, timeout=120)
        assert report.idle and report.dead_tasks == 0 and report.failed_runs == 0

        head = chain.head()
        follow_until(rt, dagster_instance, lambda: hot_cursor(rt) == head)
        assert_hot_equals_chain(rt, chain, 40, head)
        totals = [
            head + 1,
            chain.count_transactions(0, head + 1),
            chain.count_logs(0, head + 1),
            0,
            head,
        ]
        assert service(COUNTS) == [totals]  # cold [0, 40) + hot [40, head]

        # an alert on blocks, applied now: only compaction commits can wake it
        with rt.state() as conn:
            apply_alert(
                conn,
                rt.settings.org_id,
                parse_alert(
                    "kind: alert\nname: tall\njob: fed\nreads: [blocks]\n"
                    "condition: SELECT block_number FROM blocks WHERE gas_used > 1e12\n"
                    "trigger: {on_commit: true}\ndedupe_key: 'tall:{block_number}'\n"
                    "severity: info\nchannels: [{log: {}}]\n",
                    source="alert.yaml",
                ),
            )
        result = compactor_step(rt, None, LOG)
        assert result.worked, result.summary
        (event,) = map(asset_observation, result.observations)
        assert isinstance(event, AssetObservation)
        assert event.asset_key.path == ["hot", f"chain_{CHAIN_ID}"]
        final_end = head - 5 + 1  # finality_depth 5 from the job
        assert event.metadata["final_end"].value == final_end
        cut = final_end // 20 * 20
        with rt.state() as conn:
            for ds in ("blocks", "transactions", "logs"):
                ranges = [
                    (v.range_start, v.range_end)
                    for v in registry.versions_for_stream(conn, rt.settings.org_id, CHAIN_ID, ds)
                ]
                assert ranges == [(a, a + 20) for a in range(0, cut, 20)], ds
        with psycopg.connect(rt.dbs.data_url) as conn:
            low = conn.execute(
                "SELECT min(block_number) FROM data.hot_blocks WHERE chain_id = %s", (CHAIN_ID,)
            ).fetchone()
        assert low == (cut,)  # compacted hot rows are gone, the rest stays hot
        assert service(COUNTS) == [totals]  # every block counted once after compaction

        again = compactor_step(rt, None, LOG)
        assert not again.worked and "0 range(s) committed" in again.summary
        assert service(COUNTS) == [totals]

        # each compacted blocks version woke the alert reading blocks (downstream wake-ups)
        dispatch_tick(rt)
        with rt.state() as conn:
            woken = conn.execute(
                "SELECT payload->'source'->>'dataset_version' FROM state.tasks "
                "WHERE operator = 'alert_evaluate'"
            ).fetchall()
            compacted = [
                str(v.dataset_version)
                for v in registry.versions_for_stream(conn, rt.settings.org_id, CHAIN_ID, "blocks")
                if v.range_start >= 40
            ]
        assert compacted and sorted(r[0] for r in woken) == sorted(compacted)


def _stream_cursors(rt: Runtime, job: str) -> set[int]:
    with rt.state() as conn:
        (status,) = collect_status(conn, rt.settings.org_id, job)
    return {s.next_block for s in status.streams}


def _hot_block_numbers(rt: Runtime) -> list[int]:
    with psycopg.connect(rt.dbs.data_url) as conn:
        rows = conn.execute(
            "SELECT block_number FROM data.hot_blocks WHERE chain_id = %s ORDER BY 1", (CHAIN_ID,)
        ).fetchall()
    return [int(r[0]) for r in rows]


def test_follow_head_hot_rows_that_cold_serves_are_pruned(
    trace_env: Runtime,
    dagster_instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    service: Callable[..., list[Any]],
) -> None:
    """follow_head does not compact; once chain_sync's ranges go cold behind the tip, the
    compactor sensor deletes the hot rows they serve. Query totals hold before and after."""
    with DevChain.start(blocks=60, seed=11) as chain:
        monkeypatch.setenv("TRACE_RPC_POOL_FH_URL", chain.rpc_url)
        rt = Runtime(load_settings())
        streams = "".join(
            f"  {ds}: {{cryo_dataset_name: {ds}, rpc_pool: fh, chunk_size: 10, max_inflight: 4}}\n"
            for ds in ("blocks", "transactions", "logs")
        )
        apply(
            rt,
            f"kind: chain_sync\nname: fh\nchain_id: {CHAIN_ID}\n"
            "mode: {kind: follow_head, from_block: 0, tail_lag: 5, head_poll_interval_seconds: 1,"
            " max_head_age_seconds: 600}\n"
            f"streams:\n{streams}hot: {{rpc_pool: fh}}\nfinality_depth: 3\n",
        )
        cold_defs = Definitions(
            jobs=[trace_worker],
            sensors=[dispatcher_sensor, worker_sensor],
            resources={"trace": TraceResource()},
        )

        def sync_cold_to(end: int) -> None:
            deadline = time.monotonic() + 120
            while _stream_cursors(rt, "fh") != {end}:
                assert time.monotonic() < deadline, _stream_cursors(rt, "fh")
                report = drive_until_idle(rt, cold_defs, dagster_instance, timeout=60)
                assert report.dead_tasks == 0 and report.failed_runs == 0

        sync_cold_to(55)  # head 59, tail_lag 5
        follow_until(rt, dagster_instance, lambda: hot_cursor(rt) == 59)
        assert _hot_block_numbers(rt) == list(range(55, 60))  # hot starts at the eligible end

        chain.seed(100, 12)  # the chain grows to 100 blocks with activity
        follow_until(rt, dagster_instance, lambda: hot_cursor(rt) == 99)
        sync_cold_to(95)
        totals = [100, chain.count_transactions(0, 100), chain.count_logs(0, 100), 0, 99]
        assert totals[1] > 0 and totals[2] > 0
        assert service(COUNTS) == [totals]
        assert _hot_block_numbers(rt) == list(range(55, 100))  # rows below 95 are cold's now

        result = compactor_step(rt, None, LOG)
        assert result.worked, result.summary
        (event,) = map(asset_observation, result.observations)
        assert isinstance(event, AssetObservation)
        pruned = event.metadata["pruned_hot_rows"].value
        assert isinstance(pruned, dict) and pruned["blocks"] == 40
        # below min(cold boundary 95, final end 97, cursor 99): gone; the tip stays hot
        assert _hot_block_numbers(rt) == list(range(95, 100))
        assert service(COUNTS) == [totals]
        with rt.state() as conn:
            ranges = registry.versions_for_stream(conn, rt.settings.org_id, CHAIN_ID, "blocks")
        assert ranges[-1].range_end == 95 and all(r.config_hash.startswith("cryo") for r in ranges)


def test_missing_pool_url_is_a_skip_reason_and_a_status_blocked_reason(
    trace_env: Runtime, dagster_instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRACE_RPC_POOL_NOWHERE_URL", raising=False)
    defs = build_definitions(trace_env)
    for name in ("trace_hot_follower", "trace_hot_compactor"):
        assert defs.resolve_sensor_def(name).default_status == DefaultSensorStatus.RUNNING
    nothing = follower_step(trace_env, None, LOG)
    assert not nothing.worked and "no enabled" in nothing.summary

    apply(
        trace_env, job_yaml("blocked", "nowhere", to_block=10, chunk=10, hot="{rpc_pool: nowhere}")
    )
    result = follower_step(trace_env, None, LOG)
    assert not result.worked
    assert "TRACE_RPC_POOL_NOWHERE_URL is not set" in result.summary
    assert hot_cursor(trace_env) is None

    runner = CliRunner()
    as_json = runner.invoke(cli, ["status", "--job", "blocked", "--json"])
    assert as_json.exit_code == 0, as_json.output
    hot = json.loads(as_json.output)["jobs"][0]["hot"]
    assert hot["blocked_reason"] == "MissingRpcUrl: TRACE_RPC_POOL_NOWHERE_URL is not set"
    assert (hot["cursor"], hot["start_block"], hot["compact"]) == (None, 10, True)
    text = runner.invoke(cli, ["status", "--job", "blocked"])
    assert text.exit_code == 0 and "TRACE_RPC_POOL_NOWHERE_URL is not set" in text.output


def test_follow_head_jobs_start_at_the_planners_eligible_end(trace_env: Runtime) -> None:
    text = (
        f"kind: chain_sync\nname: tail\nchain_id: {CHAIN_ID}\n"
        "mode: {kind: follow_head, from_block: 100, tail_lag: 10, head_poll_interval_seconds: 5,"
        " max_head_age_seconds: 60}\n"
        "streams:\n  blocks: {cryo_dataset_name: blocks, rpc_pool: p, chunk_size: 50, max_inflight: 2}\n"
        "hot: {rpc_pool: p}\n"
    )
    apply(trace_env, text)
    with trace_env.state() as conn:
        (job,) = store.list_hot_jobs(conn, trace_env.settings.org_id, "tail")
        assert (job.start_block, job.compact) == (None, False)  # waits for a head; never compacts
        (status,) = collect_status(conn, trace_env.settings.org_id, "tail", environ={})
        assert status.hot is not None and status.hot.blocked_reason is not None
        assert "MissingHeadObservation" in status.hot.blocked_reason
        for head, start in ((50, 100), (500, 491)):
            record_head_observation(
                conn,
                org_id=trace_env.settings.org_id,
                chain_id=CHAIN_ID,
                rpc_pool="p",
                head_block=head,
            )
            (job,) = store.list_hot_jobs(conn, trace_env.settings.org_id, "tail")
            assert job.start_block == start  # max(from_block, head + 1 - tail_lag)


@pytest.mark.parametrize(
    ("hot", "line", "message"),
    [
        ("{rpc_pool: p, compact: true}", 5, "compact: true is not allowed with follow_head"),
        ("{rpc_pool: p, max_blocks_per_tick: '5'}", 5, "hot.max_blocks_per_tick"),
        ("{rpc_pool: p, speed: 3}", 5, "hot.speed: unknown field"),
        ("{rpc_pool: 'http://k@x'}", 5, "must name an RPC pool, not a URL"),
    ],
)
def test_hot_block_is_validated_strictly(hot: str, line: int, message: str) -> None:
    text = (
        "kind: chain_sync\nname: bad\nchain_id: 1\n"
        "streams: {blocks: {cryo_dataset_name: blocks, rpc_pool: p, chunk_size: 5, max_inflight: 1}}\n"
        f"hot: {hot}\n"
        "mode: {kind: follow_head, from_block: 0, tail_lag: 1, head_poll_interval_seconds: 1,"
        " max_head_age_seconds: 5}\n"
    )
    with pytest.raises(InvalidJobFile) as err:
        parse_job(text, source="bad.yaml")
    assert f"bad.yaml:{line}:" in str(err.value) and message in str(err.value)
