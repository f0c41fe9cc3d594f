"""chain_sync status and the head observer, on a real Postgres and a real anvil node."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest

from tests.integration.test_planner import (
    ORG,
    apply,
    complete,
    fixed_job,
    follow_job,
)
from trace_core.chain_sync import head, planner, range_outcomes, status, store
from trace_core.db.connection import Databases, connect
from trace_core.errors import ChainSyncJobNotFound
from trace_core.settings import REPO_ROOT
from trace_core.tasks import RetryPolicy, claim, complete_failure

ANVIL = REPO_ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
DEMO_ENV = {"TRACE_RPC_POOL_DEMO_URL": "http://user:s3cret@127.0.0.1:1/KEY123"}


@pytest.fixture
def conn(dbs: Databases) -> Iterator[psycopg.Connection[Any]]:
    with connect(dbs.state_url, autocommit=True) as c:
        yield c


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def anvil_url() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [str(ANVIL), "--port", str(port), "--host", "127.0.0.1", "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    try:
        while True:
            try:
                httpx.post(
                    url,
                    json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
                    timeout=1,
                )
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def only_stream(
    conn: psycopg.Connection[Any], job: str, environ: dict[str, str] | None = None
) -> dict[str, Any]:
    (js,) = status.job_status(conn, ORG, job, environ=environ if environ is not None else DEMO_ENV)
    (stream,) = js["streams"]
    return stream  # type: ignore[no-any-return]


def test_follow_head_vector(conn: psycopg.Connection[Any]) -> None:
    apply(conn, follow_job(from_block=0, tail_lag=5))
    with conn.transaction():
        head.record_head_observation(
            conn, org_id=ORG, chain_id=1, rpc_pool="standard", head_block=100
        )
    s = only_stream(conn, "follow", {"TRACE_RPC_POOL_STANDARD_URL": "http://x"})
    assert (s["observed_head"], s["eligible_exclusive"], s["lag_blocks"]) == (100, 96, 96)
    assert s["blocked"] == [] and s["blocked_reason"] is None
    assert s["percent_done"] is None and s["eta_seconds"] is None and not s["done"]


def test_missing_and_stale_heads_show_why(conn: psycopg.Connection[Any]) -> None:
    apply(conn, follow_job())
    env = {"TRACE_RPC_POOL_STANDARD_URL": "http://x"}
    planner.plan_tick(conn, org_id=ORG)
    (js,) = status.job_status(conn, ORG, "follow", environ=env)
    assert js["last_error_kind"] == "MissingHeadObservation"
    s = js["streams"][0]
    assert (s["observed_head"], s["eligible_exclusive"]) == (None, None)
    assert [b["kind"] for b in s["blocked"]] == ["MissingHeadObservation"]

    db_now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    with conn.transaction():
        head.record_head_observation(
            conn,
            org_id=ORG,
            chain_id=1,
            rpc_pool="standard",
            head_block=100,
            observed_at=db_now - timedelta(minutes=5),
        )
    s = only_stream(conn, "follow", env)
    assert (s["observed_head"], s["eligible_exclusive"]) == (100, None)
    assert s["head_age_seconds"] >= 300
    assert s["blocked"][0]["kind"] == "StaleHeadObservation"
    assert "over max_head_age_seconds=30" in s["blocked_reason"]


def test_missing_rpc_url_is_a_blocked_reason_naming_the_variable(
    conn: psycopg.Connection[Any],
) -> None:
    apply(conn, fixed_job())
    s = only_stream(conn, "job", environ={})
    assert s["blocked"] == [
        {"kind": "MissingRpcUrl", "message": "TRACE_RPC_POOL_DEMO_URL is not set"}
    ]
    assert s["rpc_url_env"] == "TRACE_RPC_POOL_DEMO_URL"
    everything = json.dumps(status.job_status(conn, ORG, environ=DEMO_ENV, queue={"depth": 3}))
    assert (
        "s3cret" not in everything
        and "KEY123" not in everything
        and "127.0.0.1:1" not in everything
    )
    assert only_stream(conn, "job")["blocked"] == []


def test_counts_percent_throughput_and_eta(conn: psycopg.Connection[Any]) -> None:
    apply(conn, fixed_job(to_block=10_000, chunk=1000, inflight=4))
    first = planner.plan_tick(conn, org_id=ORG).planned
    assert len(first) == 4
    complete(conn, first[0].task_id)
    complete(conn, first[1].task_id)
    with conn.transaction():
        claim(conn, first[2].task_id, lease_seconds=30)  # running
    with conn.transaction():
        lease = claim(conn, first[3].task_id, lease_seconds=30)
    with conn.transaction():
        complete_failure(conn, lease, error="x", fatal=True, policy=RetryPolicy(0, 0))
        range_outcomes.on_task_dead(conn, lease)

    (js,) = status.job_status(conn, ORG, "job", environ=DEMO_ENV, queue={"depth": 7})
    s = js["streams"][0]
    assert (s["scheduled"], s["running"], s["completed"], s["dead"], s["inflight"]) == (
        0,
        1,
        2,
        1,
        1,
    )
    assert s["next_block"] == 4000 and s["completed_blocks"] == 2000
    assert s["percent_done"] == 20.0
    assert s["throughput_blocks_per_s"] > 0
    assert s["eta_seconds"] == pytest.approx(
        8000 / s["throughput_blocks_per_s"], abs=0.06
    )  # rounded to 0.1 s
    assert s["eligible_exclusive"] == 10_000
    assert [b["kind"] for b in s["blocked"]] == ["DeadRanges"]
    assert f"first [3000, 4000) task {first[3].task_id}" in s["blocked_reason"]
    assert js["queue"] == {"depth": 7} and not js["done"]
    json.dumps(js)


def test_retrying_and_done(conn: psycopg.Connection[Any]) -> None:
    apply(conn, fixed_job(to_block=2000, chunk=1000, inflight=2))
    a, b = planner.plan_tick(conn, org_id=ORG).planned
    with conn.transaction():
        lease = claim(conn, a.task_id, lease_seconds=30)
    with conn.transaction():
        assert (
            complete_failure(conn, lease, error="flaky", fatal=False, policy=RetryPolicy(0, 0))
            == "retry"
        )
    s = only_stream(conn, "job")
    assert (s["scheduled"], s["retrying"], s["running"]) == (2, 1, 0)
    complete(conn, a.task_id)
    complete(conn, b.task_id)
    (js,) = status.job_status(conn, ORG, "job", environ={})
    assert (
        js["done"]
        and js["streams"][0]["percent_done"] == 100.0
        and js["streams"][0]["eta_seconds"] == 0.0
    )
    assert js["streams"][0]["blocked"] == []  # a finished stream needs no RPC


def test_paused_job_shows_paused(conn: psycopg.Connection[Any]) -> None:
    apply(conn, fixed_job())
    store.set_enabled(conn, ORG, "job", False)
    (js,) = status.job_status(conn, ORG, environ=DEMO_ENV)
    assert js["enabled"] is False
    assert js["streams"][0]["blocked"][0] == {
        "kind": "Paused",
        "message": "job is paused (trace-lite resume --job job)",
    }
    with pytest.raises(ChainSyncJobNotFound):
        status.job_status(conn, ORG, "missing")
    assert status.job_status(conn, "00000000-0000-0000-0000-000000000009") == []


def test_head_observer_records_blocked_reasons_without_urls(conn: psycopg.Connection[Any]) -> None:
    apply(conn, follow_job())
    polls = head.observe_heads(conn, ORG, rpc_url_resolver=lambda pool: None)
    assert polls == [
        head.HeadPoll(
            1, "standard", None, "MissingRpcUrl", "TRACE_RPC_POOL_STANDARD_URL is not set"
        )
    ]
    assert (
        head.observe_heads(conn, ORG, rpc_url_resolver=lambda pool: None) == []
    )  # poll interval respected
    s = only_stream(conn, "follow", environ={})
    assert [b["kind"] for b in s["blocked"]] == ["MissingRpcUrl", "MissingHeadObservation"]

    conn.execute("UPDATE state.chain_head_observations SET checked_at = now() - interval '1 hour'")
    dead_url = f"http://user:s3cret@127.0.0.1:{_free_port()}/KEY123"
    (poll,) = head.observe_heads(conn, ORG, rpc_url_resolver=lambda pool: dead_url)
    assert poll.error_kind == "RpcUnavailable" and "s3cret" not in (poll.error_message or "")
    s = only_stream(conn, "follow", {"TRACE_RPC_POOL_STANDARD_URL": dead_url})
    assert [b["kind"] for b in s["blocked"]] == ["MissingHeadObservation", "RpcUnavailable"]
    assert "KEY123" not in json.dumps(s)


def test_head_observer_reads_a_real_node(conn: psycopg.Connection[Any], anvil_url: str) -> None:
    httpx.post(
        anvil_url,
        json={"jsonrpc": "2.0", "id": 1, "method": "anvil_mine", "params": ["0x64"]},
        timeout=5,
    )
    job = follow_job(tail_lag=5, chunk=40).replace("chain_id: 1\n", "chain_id: 31337\n")
    apply(conn, job)
    polls = head.observe_heads(conn, ORG, rpc_url_resolver=lambda pool: anvil_url)
    assert polls == [head.HeadPoll(31337, "standard", 100)]
    planned = planner.plan_tick(conn, org_id=ORG).planned
    assert [(p.range_start, p.range_end) for p in planned] == [(0, 40), (40, 80), (80, 96)]

    # a pool serving another chain is refused, and the job's last good head is kept
    wrong = apply(conn, follow_job().replace("name: follow", "name: wrong_chain"))
    assert wrong.created
    conn.execute("UPDATE state.chain_head_observations SET checked_at = now() - interval '1 hour'")
    polls = head.observe_heads(conn, ORG, rpc_url_resolver=lambda pool: anvil_url)
    by_chain = {p.chain_id: p for p in polls}
    assert by_chain[1].error_kind == "ChainIdMismatch" and by_chain[1].head_block is None
    assert by_chain[31337].head_block == 100
    s = only_stream(conn, "wrong_chain", {"TRACE_RPC_POOL_STANDARD_URL": "x"})
    assert [b["kind"] for b in s["blocked"]] == ["MissingHeadObservation", "ChainIdMismatch"]
    assert "pool standard serves chain 31337, not 1" in s["blocked_reason"]
