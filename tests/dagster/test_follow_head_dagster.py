"""follow_head through Dagster's harness: a real anvil chain that grows, real cryo, real Postgres.

follow_head never finishes, so these tests drive sensor ticks and runs until a condition holds,
polling with a deadline, and check the invariants after every tick.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from dagster import DagsterInstance

from trace_core.chain_sync import status, store
from trace_core.chain_sync.planner import range_partition_key
from trace_core.chain_sync.yamlload import load_job_file
from trace_core.cli.main import cli
from trace_core.datasets import registry
from trace_core.db.migrate import migrate
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_dagster.definitions import build_definitions
from trace_dagster.driver import DriveReport, drive_until_idle
from trace_dagster.partitions import partitions_def_name, stream_asset_key
from trace_lite.devtools.devchain import DevChain

TAIL_LAG = 5
CHUNK = 100
STREAMS = ("blocks", "transactions")
DRIVE_TIMEOUT_SECONDS = 120.0
POLL_SECONDS = 0.25

JOB = """kind: chain_sync
name: {name}
chain_id: {chain_id}
epoch_blocks: 200
mode:
  kind: follow_head
  from_block: 0
  tail_lag: {lag}
  head_poll_interval_seconds: 1
  max_head_age_seconds: 60
streams:
  blocks: {{cryo_dataset_name: blocks, rpc_pool: {pool}, chunk_size: {chunk}, max_inflight: 2}}
  transactions: {{cryo_dataset_name: transactions, rpc_pool: {pool}, chunk_size: {chunk}, max_inflight: 2}}
"""


@pytest.fixture
def growing_chain() -> Iterator[DevChain]:
    """This test's own anvil chain (it mines more blocks, so not the shared session chain)."""
    with DevChain.start(blocks=300, seed=5) as chain:
        yield chain


def _apply(
    rt: Runtime, tmp_path: Path, *, name: str, chain_id: int, pool: str
) -> store.ApplyResult:
    job_file = tmp_path / f"{name}.yaml"
    job_file.write_text(
        JOB.format(name=name, chain_id=chain_id, lag=TAIL_LAG, pool=pool, chunk=CHUNK)
    )
    spec, raw = load_job_file(job_file)
    migrate(rt.dbs)
    with rt.state() as conn:
        return store.apply_job(conn, rt.settings.org_id, spec, raw, str(job_file))


def _streams(rt: Runtime, job: str) -> dict[str, dict[str, object]]:
    with rt.state() as conn:
        (js,) = status.job_status(conn, rt.settings.org_id, job)
    return {str(s["dataset_key"]): s for s in js["streams"]}


def _ranges(rt: Runtime, job_id: object) -> list[store.RangeRow]:
    with rt.state() as conn:
        return store.list_ranges(conn, job_id)  # type: ignore[arg-type]


def _drive_until(
    rt: Runtime,
    instance: DagsterInstance,
    done: Callable[[], bool],
    on_tick: Callable[[DriveReport], None],
) -> None:
    """Drive ticks and runs until ``done()``, failing at the deadline or on any failed run."""
    defs = build_definitions(rt)
    deadline = time.monotonic() + DRIVE_TIMEOUT_SECONDS
    while not done():
        left = deadline - time.monotonic()
        assert left > 0, "follow_head did not catch up before the deadline"
        report = drive_until_idle(
            rt, defs, instance, timeout=left, poll_seconds=POLL_SECONDS, on_tick=on_tick
        )
        assert report.failed_runs == 0 and report.dead_tasks == 0
        if report.runs == 0 and not done():
            # caught up with the last observed head: poll again after the next head poll
            time.sleep(POLL_SECONDS)


def test_follow_head_keeps_up_with_a_growing_chain(
    trace_env: Runtime,
    dagster_instance: DagsterInstance,
    growing_chain: DevChain,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    chain = growing_chain
    monkeypatch.setenv("TRACE_RPC_POOL_GROW_URL", chain.rpc_url)
    rt = Runtime(load_settings())
    applied = _apply(rt, tmp_path, name="follow", chain_id=chain.chain_id, pool="grow")
    ticks = 0

    def check_tick(_: DriveReport) -> None:
        """Nothing is ever planned past the safe head (observed head + 1 - tail_lag)."""
        nonlocal ticks
        ticks += 1
        safe_end = chain.head() + 1 - TAIL_LAG
        for key, s in _streams(rt, "follow").items():
            eligible = s["eligible_exclusive"]
            assert isinstance(eligible, int) and eligible <= safe_end, (key, s)
            assert isinstance(s["next_block"], int) and s["next_block"] <= eligible, (key, s)
        ends = [r.range_end for r in _ranges(rt, applied.job_id)]
        assert max(ends, default=0) <= safe_end

    def caught_up() -> bool:
        target = chain.head() + 1 - TAIL_LAG
        streams = _streams(rt, "follow")
        return all(
            s["next_block"] == target and s["inflight"] == 0 and s["dead"] == 0
            for s in streams.values()
        )

    _drive_until(rt, dagster_instance, caught_up, check_tick)
    assert _streams(rt, "follow")["blocks"]["next_block"] == 300 - TAIL_LAG

    chain.seed(blocks=450, seed=9)  # mines 150 more blocks, with transactions and logs
    assert chain.head() == 449
    _drive_until(rt, dagster_instance, caught_up, check_tick)
    assert ticks > 2

    end = 450 - TAIL_LAG
    ranges = _ranges(rt, applied.job_id)
    for key in STREAMS:
        mine = sorted((r.range_start, r.range_end) for r in ranges if r.dataset_key == key)
        # contiguous, each at most a chunk, covering exactly [0, end)
        assert mine[0][0] == 0 and mine[-1][1] == end
        assert all(a[1] == b[0] for a, b in zip(mine, mine[1:], strict=False))
        assert all(0 < e - s <= CHUNK for s, e in mine)
        assert {r.status for r in ranges if r.dataset_key == key} == {"completed"}
        with rt.state() as conn:
            dataset_uuid = store.stream_dataset_uuid(rt.settings.org_id, chain.chain_id, key)
            versions = registry.versions_of_dataset(conn, dataset_uuid)
        assert sorted((v.range_start, v.range_end) for v in versions) == mine  # one each
        rows = sum(v.row_count for v in versions)
        expected = end if key == "blocks" else chain.count_transactions(0, end)
        assert rows == expected, key
        # epochs of 200 up to the head: the two behind it are materialized, the one at the
        # head is not (a follow_head epoch completes only at its end)
        parts = dagster_instance.get_dynamic_partitions(partitions_def_name("follow", key))
        assert parts == [range_partition_key(a, a + 200) for a in (0, 200, 400)]
        mats = dagster_instance.get_materialized_partitions(stream_asset_key("follow", key))
        assert mats == {range_partition_key(0, 200), range_partition_key(200, 400)}
    assert chain.count_transactions(300 - TAIL_LAG, end) > 0  # the new blocks carried data


def test_missing_pool_url_blocks_and_plans_nothing(
    trace_env: Runtime,
    dagster_instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("TRACE_RPC_POOL_NOURL_URL", raising=False)
    rt = trace_env
    applied = _apply(rt, tmp_path, name="blind", chain_id=31337, pool="nourl")

    report = drive_until_idle(rt, build_definitions(rt), dagster_instance, timeout=60)
    assert report.idle and report.runs == 0

    assert _ranges(rt, applied.job_id) == []
    with rt.state() as conn:
        tasks = conn.execute("SELECT count(*) FROM state.tasks").fetchone()
    assert tasks == (0,)
    for s in _streams(rt, "blind").values():
        assert s["eligible_exclusive"] is None and s["next_block"] == 0
        assert "TRACE_RPC_POOL_NOURL_URL is not set" in str(s["blocked_reason"])

    # the same reason, as `trace-lite status --json` prints it
    result = CliRunner().invoke(cli, ["status", "--job", "blind", "--json"])
    assert result.exit_code == 0, result.output
    (job,) = json.loads(result.stdout)["jobs"]
    kinds = {b["kind"] for s in job["streams"] for b in s["blocked"]}
    assert {"MissingRpcUrl", "MissingHeadObservation"} <= kinds
    assert all("TRACE_RPC_POOL_NOURL_URL" in s["blocked_reason"] for s in job["streams"])
