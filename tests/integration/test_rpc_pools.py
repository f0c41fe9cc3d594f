"""RPC pools under hostile providers: a loopback fault proxy (trace_lite/devtools/rpcproxy.py FaultProxy) in front of
the session's real anvil chain, real cryo, real Postgres.

Each fault is shown to be retried (failover), split (adaptive log ranges), blocked/detected
(wrong chain, stale head, omitted logs), and no range commits with missing rows.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import duckdb
import psycopg
import pytest

from tests.conftest import ANVIL_CHAIN_BLOCKS
from tests.integration.test_cryo_ingest import (
    ENV_VAR,
    _claim,
    _connector,
    _fail,
    _files,
    _nothing_committed,
    _payload,
)
from trace_core.db.connection import Databases
from trace_core.errors import ChainMismatch, ConfigError, CoverageError, RpcError
from trace_core.operators.cryo_ingest import run_cryo_ingest
from trace_core.rpc.pool import RateLimiter, RpcPool
from trace_core.settings import Settings, rpc_pool_rps, rpc_pool_url, rpc_pool_urls
from trace_core.storage import LocalStore
from trace_lite.devtools.devchain import DevChain
from trace_lite.devtools.rpcproxy import FaultProxy

URLS_VAR = ENV_VAR + "S"


@pytest.fixture
def real_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"cryo_mode": "real", "verify_log_receipts": True, "rpc_timeout_seconds": 5.0}
    )


@pytest.fixture
def store(settings: Settings) -> LocalStore:
    return LocalStore(settings.resolved_home() / "objects")


@pytest.fixture
def proxies(anvil_chain: DevChain) -> Iterator[tuple[FaultProxy, FaultProxy]]:
    with FaultProxy(anvil_chain.rpc_url) as a, FaultProxy(anvil_chain.rpc_url) as b:
        yield a, b


def _pool(settings: Settings, *urls: str, **env: str) -> RpcPool:
    return RpcPool.from_env(
        "anvil", settings, {ENV_VAR: urls[0], URLS_VAR: ",".join(urls[1:]), **env}
    )


def _first_block_with_logs(chain: DevChain, start: int, end: int) -> int:
    logs = chain.rpc.call("eth_getLogs", [{"fromBlock": hex(start), "toBlock": hex(end - 1)}])
    return int(logs[0]["blockNumber"], 16)


def test_pool_urls_come_from_env_only_and_the_old_variable_still_works() -> None:
    env = {ENV_VAR: "http://a", URLS_VAR: " http://b, http://a ,,http://c "}
    assert rpc_pool_urls("anvil", env) == ["http://a", "http://b", "http://c"]
    assert rpc_pool_url("anvil", env) == "http://a"
    assert rpc_pool_urls("anvil", {URLS_VAR: "http://b,http://c"}) == ["http://b", "http://c"]
    assert rpc_pool_url("anvil", {ENV_VAR: "http://a"}) == "http://a"
    assert rpc_pool_urls("anvil", {}) == []
    assert rpc_pool_rps("anvil", {"TRACE_RPC_POOL_ANVIL_ENDPOINT_RPS": "5, 2"}) == [5.0, 2.0]
    with pytest.raises(ConfigError, match="TRACE_RPC_POOL_ANVIL_ENDPOINT_RPS"):
        rpc_pool_rps("anvil", {"TRACE_RPC_POOL_ANVIL_ENDPOINT_RPS": "fast"})


def test_rate_limiter_spaces_requests() -> None:
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(4, clock=lambda: now[0], sleep=sleep)
    for _ in range(8):
        limiter.acquire()
    assert waits == pytest.approx([0.25] * 4)  # a burst of 4, then one every 0.25 s
    assert now[0] == pytest.approx(1.0)


def test_failover_on_drops_429s_and_truncated_json(
    settings: Settings, proxies: tuple[FaultProxy, FaultProxy], anvil_chain: DevChain
) -> None:
    a, b = proxies
    with _pool(settings, a.url, b.url) as pool:
        for fault in ("drop", "rate_limit", "truncate"):
            setattr(a.faults, fault, 1)
            assert pool.block_number() == anvil_chain.head()
            assert a.hits[fault] == 1, fault
            # the failed endpoint cools down; the next calls go to the other one meanwhile
            for endpoint in pool.endpoints:
                endpoint.cooling_until = 0.0
        assert b.methods["eth_blockNumber"] == 3

    # a lone endpoint answering 429 is retried after its Retry-After
    a.faults.rate_limit, a.faults.retry_after = 1, 0.5
    with _pool(settings, a.url) as pool:
        started = time.monotonic()
        assert pool.chain_id() == 31337
        assert time.monotonic() - started >= 0.45
    # ... unless the Retry-After is longer than we are willing to wait: a clear error
    a.faults.rate_limit, a.faults.retry_after = 1, 120
    with _pool(settings, a.url) as pool, pytest.raises(RpcError) as info:
        pool.chain_id()
    assert "rate-limited" in info.value.message and a.url not in info.value.message
    assert info.value.fields["retry_after"] > 100


def test_pool_check_detects_wrong_chain_and_stale_heads(
    settings: Settings, proxies: tuple[FaultProxy, FaultProxy], anvil_chain: DevChain
) -> None:
    a, b = proxies
    head = anvil_chain.head()
    a.faults.chain_id = 1
    b.faults.head = head - 200
    with FaultProxy(anvil_chain.rpc_url) as c, _pool(settings, a.url, b.url, c.url) as pool:
        usable, checks = pool.check(31337, need_block=head - 10)
        assert [e.label for e in usable.endpoints] == ["pool anvil endpoint 3"]
        problems = [ch.problem for ch in checks]
        assert problems[0] == "serves chain 1, not 31337"
        assert problems[1] is not None and "below block" in problems[1]
        assert problems[2] is None
        # without a block to reach, a head far behind the best is still stale
        _usable, checks = pool.check(31337)
        assert checks[1].problem is not None and "stale head" in checks[1].problem
    with _pool(settings, a.url) as pool, pytest.raises(ChainMismatch, match="serves chain 1"):
        pool.check(31337)
    with _pool(settings, b.url) as pool, pytest.raises(CoverageError, match="past the head"):
        pool.check(31337, need_block=head)


def test_refused_log_ranges_are_split_until_the_provider_accepts(
    real_settings: Settings,
    store: LocalStore,
    dbs: Databases,
    proxies: tuple[FaultProxy, FaultProxy],
    anvil_chain: DevChain,
) -> None:
    a, _b = proxies
    a.faults.max_log_span = 10
    payload = _payload("logs", 0, 600, cryo_options={"inner_request_size": 100})
    result = run_cryo_ingest(
        real_settings, store, _claim(dbs, payload), state=_connector(dbs), environ={ENV_VAR: a.url}
    )
    assert a.hits["refused_span"] > 0
    con = duckdb.connect()
    (n,) = con.execute(
        f"SELECT count(*) FROM read_parquet({_files(dbs, store, 'logs')!r})"
    ).fetchone()  # type: ignore[misc]
    assert n == result.rows == anvil_chain.count_logs(0, 600) > 0


def test_omitted_logs_are_caught_by_the_default_bloom_check(
    settings: Settings,
    store: LocalStore,
    dbs: Databases,
    proxies: tuple[FaultProxy, FaultProxy],
    anvil_chain: DevChain,
) -> None:
    """Default settings (no receipts check): the logsBloom of the headers catches a reply that
    lacks one block's logs, with header calls only; the good retry passes the same check."""
    assert settings.cryo_mode == "real" and not settings.verify_log_receipts
    a, _b = proxies
    omitted = _first_block_with_logs(anvil_chain, 0, 500)
    a.faults.omit_logs_of_block = omitted
    env = {ENV_VAR: a.url}
    task_id = uuid.uuid4()
    lease = _claim(dbs, _payload("logs", 0, 500), task_id=task_id)
    with pytest.raises(CoverageError, match=f"logsBloom of block\\(s\\) {omitted}: "):
        run_cryo_ingest(settings, store, lease, state=_connector(dbs), environ=env)
    assert a.hits["omit_logs"] > 0
    assert a.methods["eth_getBlockReceipts"] == 0 and a.methods["eth_getBlockByNumber"] > 0
    assert _fail(dbs, lease, CoverageError("x")) == "retry"
    _nothing_committed(dbs, store)
    a.faults.omit_logs_of_block = None
    with psycopg.connect(dbs.state_url, autocommit=True) as conn:
        conn.execute("UPDATE state.tasks SET next_run_at = now() WHERE task_id = %s", (task_id,))
    lease = _claim_again(dbs, task_id)
    result = run_cryo_ingest(settings, store, lease, state=_connector(dbs), environ=env)
    assert result.rows == anvil_chain.count_logs(0, 500) and result.mode == "real"


def test_omitted_logs_are_detected_and_never_committed(
    real_settings: Settings,
    store: LocalStore,
    dbs: Databases,
    proxies: tuple[FaultProxy, FaultProxy],
    anvil_chain: DevChain,
) -> None:
    """The opt-in receipts check (exact counts) catches it too, bloom check off."""
    real_settings = real_settings.model_copy(update={"verify_logs_bloom": False})
    a, _b = proxies
    a.faults.omit_logs_of_block = _first_block_with_logs(anvil_chain, 0, 500)
    env = {ENV_VAR: a.url}
    task_id = uuid.uuid4()
    lease = _claim(dbs, _payload("logs", 0, 500), task_id=task_id)
    with pytest.raises(CoverageError, match="receipts of \\[0, 500\\) hold"):
        run_cryo_ingest(real_settings, store, lease, state=_connector(dbs), environ=env)
    assert a.hits["omit_logs"] > 0
    assert _fail(dbs, lease, CoverageError("x")) == "retry"
    _nothing_committed(dbs, store)
    # the provider recovers: the retry commits every log exactly once
    a.faults.omit_logs_of_block = None
    with psycopg.connect(dbs.state_url, autocommit=True) as conn:
        conn.execute("UPDATE state.tasks SET next_run_at = now() WHERE task_id = %s", (task_id,))
    lease = _claim_again(dbs, task_id)
    result = run_cryo_ingest(real_settings, store, lease, state=_connector(dbs), environ=env)
    assert result.rows == anvil_chain.count_logs(0, 500)


def _claim_again(dbs: Databases, task_id: uuid.UUID) -> Any:
    from trace_core.tasks import claim

    with psycopg.connect(dbs.state_url, autocommit=True) as conn, conn.transaction():
        return claim(conn, task_id, lease_seconds=30)


def test_cryo_fails_over_past_dead_wrong_and_stale_endpoints(
    real_settings: Settings,
    store: LocalStore,
    dbs: Databases,
    proxies: tuple[FaultProxy, FaultProxy],
    anvil_chain: DevChain,
) -> None:
    a, b = proxies
    a.faults.chain_id = 1
    b.faults.head = 100
    dead = "http://127.0.0.1:9/secret-key"
    with FaultProxy(anvil_chain.rpc_url) as c:
        c.faults.drop, c.faults.rate_limit, c.faults.retry_after = 2, 2, 0.2
        c.faults.fault_methods = {"eth_getBlockByNumber"}
        env = {ENV_VAR: dead, URLS_VAR: f"{a.url},{b.url},{c.url}"}
        result = run_cryo_ingest(
            real_settings,
            store,
            _claim(dbs, _payload("transactions", 1000, 1500)),
            state=_connector(dbs),
            environ=env,
        )
        assert result.rows == anvil_chain.count_transactions(1000, 1500)
        assert c.hits["drop"] == 2 and c.hits["rate_limit"] == 2
    # the wrong-chain and stale endpoints were only probed, never asked for data
    assert set(a.methods) == {"eth_chainId"}
    assert set(b.methods) == {"eth_chainId", "eth_blockNumber"}


def test_every_endpoint_down_is_retryable_and_names_no_url(
    real_settings: Settings, store: LocalStore, dbs: Databases
) -> None:
    env = {ENV_VAR: "http://127.0.0.1:9/k1", URLS_VAR: "http://127.0.0.1:9/k2"}
    lease = _claim(dbs, _payload("blocks", 0, ANVIL_CHAIN_BLOCKS))
    with pytest.raises(RpcError) as info:
        run_cryo_ingest(real_settings, store, lease, state=_connector(dbs), environ=env)
    assert "no endpoint answered" in info.value.message
    assert "k1" not in info.value.message and "k2" not in info.value.message
    _nothing_committed(dbs, store)


def test_a_stream_needing_a_method_the_pool_lacks_is_blocked_with_the_reason(
    settings: Settings, dbs: Databases, proxies: tuple[FaultProxy, FaultProxy]
) -> None:
    from tests.integration.test_planner import ORG, apply, fixed_job
    from trace_core.chain_sync import capabilities, planner, status
    from trace_core.db.connection import connect

    a, _b = proxies
    a.faults.missing_methods = {"debug_traceBlockByNumber"}
    env = {"TRACE_RPC_POOL_DEMO_URL": a.url}
    with connect(dbs.state_url, autocommit=True) as conn:
        apply(conn, fixed_job(to_block=2000, streams=("blocks", "geth_calls")))
        assert capabilities.probe_due(conn, ORG, settings, env) == 1
        assert capabilities.probe_due(conn, ORG, settings, env) == 0  # fresh until the TTL
        assert a.hits["missing_method"] == 2  # callTracer and prestateTracer probes

        planned = planner.plan_tick(conn, org_id=ORG).planned
        assert {p.dataset_key for p in planned} == {"blocks"}
        (job,) = status.job_status(conn, ORG, "job", environ=env)
        streams = {s["dataset_key"]: s for s in job["streams"]}
        assert streams["blocks"]["blocked"] == []
        (reason,) = streams["geth_calls"]["blocked"]
        assert reason["kind"] == "MissingRpcMethod"
        assert (
            "pool demo does not serve debug_traceBlockByNumber with callTracer"
            in (reason["message"])
        )
        assert a.url not in json.dumps(job)
        assert job["last_error_kind"] == "MissingRpcMethod"

        # the provider adds the method: the next probe (after the TTL) unblocks the stream
        a.faults.missing_methods = set()
        conn.execute(
            "UPDATE state.rpc_pool_capabilities SET probed_at = now() - interval '2 hours'"
        )
        assert capabilities.probe_due(conn, ORG, settings, env) == 1
        planned = planner.plan_tick(conn, org_id=ORG).planned
        assert {p.dataset_key for p in planned} == {"geth_calls"}
        (job,) = status.job_status(conn, ORG, "job", environ=env)
        assert all(s["blocked"] == [] for s in job["streams"])


def test_pool_probe_is_cached_while_the_heads_seen_cover_the_range(
    settings: Settings, proxies: tuple[FaultProxy, FaultProxy], anvil_chain: DevChain
) -> None:
    """One probe serves every range below the heads it saw, until ``max_age``; a range past
    them, or an expired answer, probes again (and a changed chain is then caught)."""
    a, _ = proxies
    head = anvil_chain.head()
    with _pool(settings, a.url) as pool:
        for need in (0, head // 2, head):
            usable = pool.check_cached(31337, need_block=need, max_age=60)
            assert [e.label for e in usable.endpoints] == ["pool anvil"]
        assert (a.methods["eth_chainId"], a.methods["eth_blockNumber"]) == (1, 1)
        with pytest.raises(CoverageError, match="past the head"):
            pool.check_cached(31337, need_block=head + 1, max_age=60)
        assert a.methods["eth_chainId"] == 2
        a.faults.chain_id = 1
        pool.check_cached(31337, need_block=0, max_age=60)  # still the cached answer
        assert a.methods["eth_chainId"] == 2
        with pytest.raises(ChainMismatch, match="serves chain 1"):
            pool.check_cached(31337, need_block=0, max_age=0)
