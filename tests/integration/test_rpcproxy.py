"""The loopback JSON-RPC proxy (trace_lite.devtools.rpcproxy) against a real anvil: single and batch
requests forwarded unchanged and counted, concurrent requests wait their latency together,
an unreachable upstream answered with JSON-RPC errors, and the per-request hook."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from trace_core.rpc.client import RpcClient
from trace_lite.devtools.devchain import DevChain
from trace_lite.devtools.rpcproxy import (
    STATS_PATH,
    UPSTREAM_ERROR_CODE,
    DropConnection,
    Exchange,
    ProxyHook,
    Reply,
    RpcProxy,
    spawn_proxy,
)
from trace_lite.stack import free_port


def _post(url: str, doc: object) -> httpx.Response:
    return httpx.post(url, content=json.dumps(doc), headers={"content-type": "application/json"})


def test_forwards_single_and_batch_requests_and_counts_them(anvil_chain: DevChain) -> None:
    direct = anvil_chain.rpc
    calls = [("eth_getBlockByNumber", [hex(n), False]) for n in (1, 2, 3)]
    calls.append(("eth_chainId", []))
    with RpcProxy(anvil_chain.rpc_url) as proxy, RpcClient(proxy.url, label="proxy") as rpc:
        assert rpc.chain_id() == anvil_chain.chain_id
        assert rpc.call("eth_getBlockByNumber", [hex(7), True]) == direct.call(
            "eth_getBlockByNumber", [hex(7), True]
        )
        assert rpc.batch(calls) == direct.batch(calls)
        stats = proxy.stats()
        assert stats["http_requests"] == 3
        assert stats["rpc_calls"] == 6
        assert stats["batches"] == 1
        assert stats["methods"] == {"eth_chainId": 2, "eth_getBlockByNumber": 4}
        assert stats["upstream_errors"] == 0 and stats["in_flight"] == 0
        # the counters are served over HTTP too, and only POST is forwarded
        assert httpx.get(proxy.url + STATS_PATH).json() == stats
        assert httpx.get(proxy.url + "/").status_code == 405


class _Barrier(ProxyHook):
    """Holds each request until ``n`` are inside the proxy at once."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0
        self.all_in: asyncio.Event | None = None

    async def before(self, exchange: Exchange) -> Reply | None:
        if self.all_in is None:
            self.all_in = asyncio.Event()
        self.seen += 1
        if self.seen >= self.n:
            self.all_in.set()
        await asyncio.wait_for(self.all_in.wait(), timeout=20)
        return None


def test_latency_is_per_request_and_concurrent(anvil_chain: DevChain) -> None:
    """Eight requests each delayed by the proxy are all inside it at the same time: the
    barrier only opens once the eighth arrives, which a serializing proxy never allows."""
    n = 8
    with RpcProxy(anvil_chain.rpc_url, latency_seconds=0.2, hook=_Barrier(n)) as proxy:

        def one(i: int) -> str:
            with RpcClient(proxy.url, label="proxy", timeout=30) as rpc:
                return str(rpc.call("eth_getBlockByNumber", [hex(i), False])["hash"])

        with ThreadPoolExecutor(n) as pool:
            hashes = list(pool.map(one, range(n)))
        assert len(set(hashes)) == n
        assert proxy.stats()["max_in_flight"] == n


def test_unreachable_upstream_gets_jsonrpc_errors_without_the_url() -> None:
    upstream = f"http://user:secret-key@127.0.0.1:{free_port('127.0.0.1')}/v2/secret-key"
    with RpcProxy(upstream) as proxy:
        single = _post(proxy.url, {"jsonrpc": "2.0", "id": 41, "method": "eth_chainId"})
        batch = _post(
            proxy.url,
            [
                {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"},
                {"jsonrpc": "2.0", "id": 2, "method": "eth_blockNumber"},
            ],
        )
        assert single.status_code == 502 and batch.status_code == 502
        assert single.json()["id"] == 41
        assert single.json()["error"]["code"] == UPSTREAM_ERROR_CODE
        assert [e["id"] for e in batch.json()] == [1, 2]
        assert {e["error"]["code"] for e in batch.json()} == {UPSTREAM_ERROR_CODE}
        assert "secret" not in single.text + batch.text and "secret" not in repr(proxy)
        assert proxy.stats()["upstream_errors"] == 2


class _FailEverySecond(ProxyHook):
    """A fault hook: every second request gets an error instead of the upstream's answer, the
    fifth loses its connection, and every reply that did reach the upstream is tagged."""

    async def before(self, exchange: Exchange) -> Reply | None:
        if exchange.seq % 2 == 0:
            error = {"code": -32005, "message": "limit"}
            doc = {"jsonrpc": "2.0", "id": exchange.calls[0]["id"], "error": error}
            return Reply(200, json.dumps(doc).encode())
        if exchange.seq == 5:
            raise DropConnection
        return None

    async def after(self, exchange: Exchange, reply: Reply) -> Reply:
        doc = json.loads(reply.body)
        if "result" in doc:
            doc["result"] = {"seq": exchange.seq, "upstream": doc["result"]}
        return Reply(reply.status, json.dumps(doc).encode())


def test_hook_answers_or_rewrites_each_request(anvil_chain: DevChain) -> None:
    with RpcProxy(anvil_chain.rpc_url, hook=_FailEverySecond()) as proxy:
        docs = [
            _post(proxy.url, {"jsonrpc": "2.0", "id": i, "method": "eth_chainId"}).json()
            for i in range(4)
        ]
        with pytest.raises(httpx.RemoteProtocolError):
            _post(proxy.url, {"jsonrpc": "2.0", "id": 5, "method": "eth_chainId"})
        assert proxy.stats()["http_requests"] == 5
    assert [d.get("error", {}).get("code") for d in docs] == [None, -32005, None, -32005]
    assert docs[0]["result"] == {"seq": 1, "upstream": hex(anvil_chain.chain_id)}
    assert docs[2]["result"]["seq"] == 3


@pytest.mark.timeout(60)
def test_proxy_in_its_own_process(anvil_chain: DevChain) -> None:
    with spawn_proxy(anvil_chain.rpc_url, latency_seconds=0.01) as proxy:
        with RpcClient(proxy.url, label="proxy") as rpc:
            assert rpc.block_number() == anvil_chain.head()
        stats = proxy.stats()
        assert stats["http_requests"] == 1 and stats["methods"] == {"eth_blockNumber": 1}
    assert proxy.process.returncode is not None
