"""Hot path on a real anvil chain, real Postgres and real DuckDB: follow, reorg, crash, compact."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from trace_core.db.connection import Databases, connect
from trace_core.hot import reorg
from trace_core.hot.finality import final_end, plan_ranges
from trace_core.hot.follower import DATASET_EVENTS, FollowResult, follow_once, load_cursor
from trace_core.hot.tables import HOT_DATASETS, count_rows, read_range, rows_from_rpc, write_block
from trace_core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
ANVIL = REPO / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
CHAIN_ID = 31337
TOPIC = "0x" + "ab" * 32
# Runtime: MSTORE 0xaa at 0; LOG2(mem[0:32], TOPIC, CALLER); STOP.
EMITTER_RUNTIME = "60aa600052" + "33" + "7f" + "ab" * 32 + "60206000a2" + "00"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Chain:
    """A live anvil process and a few JSON-RPC helpers (mine, transact, snapshot, revert)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(timeout=10)
        self.accounts: list[str] = []
        self.emitter: str | None = None

    def rpc(self, method: str, *params: Any) -> Any:
        reply = self.http.post(self.url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).json()
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def head(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def block(self, n: int, full: bool = False) -> dict[str, Any]:
        return dict(self.rpc("eth_getBlockByNumber", hex(n), full))

    def mine(self, n: int = 1) -> None:
        self.rpc("anvil_mine", hex(n))

    def setup_emitter(self) -> None:
        self.accounts = list(self.rpc("eth_accounts"))
        n = len(EMITTER_RUNTIME) // 2
        init = f"60{n:02x}600c60003960{n:02x}6000f3" + EMITTER_RUNTIME
        tx = self.rpc("eth_sendTransaction", {"from": self.accounts[0], "data": "0x" + init})
        _wait_for(lambda: self.rpc("eth_getTransactionReceipt", tx) is not None, "the emitter deployment")
        self.emitter = self.rpc("eth_getTransactionReceipt", tx)["contractAddress"]

    def busy_block(self, i: int) -> None:
        """Mine one block holding an emitting call, a legacy transfer and an EIP-1559 transfer."""
        assert self.emitter is not None
        a = self.accounts
        self.rpc("evm_setAutomine", False)
        try:
            self.rpc("eth_sendTransaction", {"from": a[1 + i % 3], "to": self.emitter, "data": "0x01"})
            self.rpc("eth_sendTransaction", {"from": a[4], "to": a[5], "value": hex(10**18 + i), "gasPrice": hex(3 * 10**9)})
            self.rpc("eth_sendTransaction", {"from": a[6], "to": a[7], "value": hex(i + 1)})
            self.rpc("evm_mine")
        finally:
            self.rpc("evm_setAutomine", True)

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def chain() -> Iterator[Chain]:
    port = _free_port()
    proc = subprocess.Popen(
        [str(ANVIL), "--port", str(port), "--host", "127.0.0.1", "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    c = Chain(f"http://127.0.0.1:{port}")
    try:
        _wait_for(lambda: _responds(c), "anvil to answer JSON-RPC")
        c.setup_emitter()
        yield c
    finally:
        c.close()
        proc.terminate()
        proc.wait(timeout=10)


def _responds(c: Chain) -> bool:
    try:
        c.head()
        return True
    except httpx.HTTPError:
        return False


def _wait_for(pred: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def follow_until_caught_up(settings: Settings, dbs: Databases, chain: Chain, **kw: Any) -> list[FollowResult]:
    results = []
    for _ in range(200):
        r = follow_once(settings, dbs, CHAIN_ID, chain.url, **{"max_blocks": 50, "start_block": 0, **kw})
        results.append(r)
        if r.cursor == chain.head() and r.ingested == 0:
            return results
    raise AssertionError("follower did not catch up")


def assert_hot_equals_chain(dbs: Databases, chain: Chain) -> None:
    """Every block 0..head is stored once with the chain's hash, and tx/log counts match."""
    head = chain.head()
    with connect(dbs.data_url) as conn:
        blocks = conn.execute(
            "SELECT block_number, block_hash FROM data.hot_blocks WHERE chain_id = %s ORDER BY 1", (CHAIN_ID,)
        ).fetchall()
        txs = dict(conn.execute("SELECT block_number, count(*) FROM data.hot_transactions WHERE chain_id = %s GROUP BY 1", (CHAIN_ID,)).fetchall())
        logs = dict(conn.execute("SELECT block_number, count(*) FROM data.hot_logs WHERE chain_id = %s GROUP BY 1", (CHAIN_ID,)).fetchall())
    assert [n for n, _ in blocks] == list(range(head + 1))
    for n, h in blocks:
        b = chain.block(n, full=True)
        assert "0x" + bytes(h).hex() == b["hash"], f"block {n}"
        assert txs.get(n, 0) == len(b["transactions"]), f"txs of block {n}"
        receipts = chain.rpc("eth_getBlockReceipts", hex(n))
        assert logs.get(n, 0) == sum(len(r["logs"]) for r in receipts), f"logs of block {n}"


def run_cryo(dataset: str, start: int, end: int, rpc: str, out: Path) -> None:
    """cryo.freeze in a child process (its runtime upsets CPython's AST recursion counter)."""
    code = (
        "import sys, cryo; cryo.freeze(sys.argv[1], blocks=[sys.argv[2]], rpc=sys.argv[3],"
        " output_dir=sys.argv[4], no_verbose=True)"
    )
    subprocess.run(
        [sys.executable, "-c", code, dataset, f"{start}:{end}", rpc, str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )


def committed_events(dbs: Databases) -> list[dict[str, Any]]:
    with connect(dbs.state_url) as conn:
        rows = conn.execute(
            "SELECT payload FROM state.outbox WHERE topic = %s ORDER BY created_at, payload->>'range_start'",
            (DATASET_EVENTS,),
        ).fetchall()
    return [r[0] for r in rows]


# --- follower ----------------------------------------------------------------------------


def test_follower_ingests_consecutive_blocks_while_anvil_mines(settings: Settings, dbs: Databases, chain: Chain) -> None:
    stop = threading.Event()

    def miner() -> None:
        i = 0
        while not stop.is_set() and i < 40:
            chain.busy_block(i)
            chain.mine(2)
            i += 1

    t = threading.Thread(target=miner)
    t.start()
    try:
        while t.is_alive():
            follow_once(settings, dbs, CHAIN_ID, chain.url, max_blocks=20, start_block=0, batch_size=7)
    finally:
        stop.set()
        t.join()
    follow_until_caught_up(settings, dbs, chain)
    assert chain.head() >= 120
    assert_hot_equals_chain(dbs, chain)
    with connect(dbs.state_url) as conn:
        cur = load_cursor(conn, CHAIN_ID)
    assert cur is not None and cur.number == chain.head() and cur.first_block == 0
    assert "0x" + (cur.hash or b"").hex() == chain.block(cur.number)["hash"]
    # events tile [0, head + 1) exactly: no gap, no overlap
    ranges = sorted((e["range_start"], e["range_end"]) for e in committed_events(dbs))
    assert ranges[0][0] == 0 and ranges[-1][1] == chain.head() + 1
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))


def invalidations(dbs: Databases) -> list[tuple[int, int, str, dict[str, Any]]]:
    with connect(dbs.data_url) as conn:
        rows = conn.execute(
            "SELECT range_start, range_end, reason, details FROM data.data_invalidations WHERE chain_id = %s ORDER BY invalidation_id",
            (CHAIN_ID,),
        ).fetchall()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def stored_tx_hashes(dbs: Databases) -> set[str]:
    with connect(dbs.data_url) as conn:
        rows = conn.execute("SELECT transaction_hash FROM data.hot_transactions").fetchall()
    return {"0x" + bytes(r[0]).hex() for r in rows}


@pytest.mark.parametrize("k", [1, 4])
def test_reorg_of_depth_k_replaces_orphaned_rows(settings: Settings, dbs: Databases, chain: Chain, k: int) -> None:
    for i in range(5):
        chain.busy_block(i)
    follow_until_caught_up(settings, dbs, chain)
    base = chain.head()
    snap = chain.rpc("evm_snapshot")
    for i in range(k):
        chain.busy_block(100 + i)
    follow_until_caught_up(settings, dbs, chain)
    old_tip = chain.head()
    assert old_tip == base + k
    orphan_blocks = {chain.block(n)["hash"] for n in range(base + 1, old_tip + 1)}
    orphan_txs = {t["hash"] for n in range(base + 1, old_tip + 1) for t in chain.block(n, True)["transactions"]}
    assert orphan_txs <= stored_tx_hashes(dbs)

    assert chain.rpc("evm_revert", snap) is True
    for i in range(k + 1):
        chain.busy_block(200 + i)
    result = follow_once(settings, dbs, CHAIN_ID, chain.url, max_blocks=50)
    assert result.reorged_depth == k
    assert result.cursor == chain.head() == base + k + 1

    assert_hot_equals_chain(dbs, chain)
    assert not orphan_txs & stored_tx_hashes(dbs)
    assert not orphan_blocks & {chain.block(n)["hash"] for n in range(chain.head() + 1)}
    (inv,) = invalidations(dbs)
    assert inv[:3] == (base + 1, old_tip + 1, "reorg")
    assert inv[3]["depth"] == k and inv[3]["old_tip"] == old_tip
    kinds = [(e["event"], e["range_start"], e["range_end"]) for e in committed_events(dbs)]
    assert ("hot_range_invalidated", base + 1, old_tip + 1) in kinds
    assert kinds[-1] == ("hot_range_committed", base + 1, base + k + 2)


def test_chain_that_got_shorter_is_rolled_back_before_it_grows(settings: Settings, dbs: Databases, chain: Chain) -> None:
    for i in range(3):
        chain.busy_block(i)
    base = chain.head()
    snap = chain.rpc("evm_snapshot")
    chain.busy_block(50)
    chain.busy_block(51)
    follow_until_caught_up(settings, dbs, chain)
    chain.rpc("evm_revert", snap)
    r = follow_once(settings, dbs, CHAIN_ID, chain.url, max_blocks=10)
    assert (r.reorged_depth, r.cursor, r.ingested) == (2, base, 0)
    assert_hot_equals_chain(dbs, chain)
    chain.busy_block(60)
    follow_until_caught_up(settings, dbs, chain)
    assert_hot_equals_chain(dbs, chain)
    assert [i[:3] for i in invalidations(dbs)] == [(base + 1, base + 3, "reorg")]


def test_anvil_reorg_while_following(settings: Settings, dbs: Databases, chain: Chain) -> None:
    for i in range(6):
        chain.busy_block(i)
    follow_until_caught_up(settings, dbs, chain)
    head = chain.head()
    chain.rpc("anvil_reorg", 3, [])
    assert chain.head() == head
    r = follow_once(settings, dbs, CHAIN_ID, chain.url, max_blocks=10)
    assert r.reorged_depth == 3 and r.cursor == head
    assert_hot_equals_chain(dbs, chain)
    assert [i[:2] for i in invalidations(dbs)] == [(head - 2, head + 1)]


def test_reorg_deeper_than_limit_fails_and_keeps_rows(settings: Settings, dbs: Databases, chain: Chain) -> None:
    from trace_core.errors import ReorgTooDeep

    chain.mine(3)
    snap = chain.rpc("evm_snapshot")
    chain.mine(5)
    follow_until_caught_up(settings, dbs, chain)
    chain.rpc("evm_revert", snap)
    chain.busy_block(1)
    chain.mine(6)
    with pytest.raises(ReorgTooDeep):
        follow_once(settings, dbs, CHAIN_ID, chain.url, max_blocks=10, max_reorg_depth=2)
    with connect(dbs.data_url) as conn:
        (n,) = conn.execute("SELECT count(*) FROM data.hot_blocks").fetchone() or (0,)
    assert n == 10  # blocks 0..9 as first ingested: nothing was deleted
    assert invalidations(dbs) == []


def test_find_common_ancestor_edges() -> None:
    from trace_core.errors import ReorgTooDeep

    ours = {5: b"a5", 6: b"a6", 7: b"a7"}
    theirs = {5: b"a5", 6: b"b6", 7: b"b7", 8: b"b8"}
    kw: dict[str, Any] = {"stored_hash": ours.get, "canonical_hash": theirs.get, "chain_id": 1}
    assert reorg.find_common_ancestor(tip=7, lowest_stored=5, max_depth=10, **kw) == reorg.Ancestor(5, b"a5")
    # the whole stored span is orphaned: re-ingest from the lowest stored block, no parent check
    assert reorg.find_common_ancestor(tip=7, lowest_stored=6, max_depth=10, **kw) == reorg.Ancestor(5, None)
    with pytest.raises(ReorgTooDeep):
        reorg.find_common_ancestor(tip=7, lowest_stored=6, max_depth=10, finalized_below=6, **kw)
    with pytest.raises(ReorgTooDeep):
        reorg.find_common_ancestor(tip=7, lowest_stored=5, max_depth=1, **kw)


# --- writes ------------------------------------------------------------------------------


def _hot_block(chain: Chain, n: int) -> Any:
    return rows_from_rpc(CHAIN_ID, chain.block(n, full=True), chain.rpc("eth_getBlockReceipts", hex(n)))


def test_redelivered_block_changes_nothing_and_other_block_replaces(dbs: Databases, chain: Chain) -> None:
    chain.busy_block(0)
    n = chain.head()
    hb = _hot_block(chain, n)
    assert len(hb.txs) == 3 and len(hb.logs) == 1
    with connect(dbs.data_url, autocommit=True) as conn:
        assert write_block(conn, CHAIN_ID, hb.block, hb.txs, hb.logs) is True
        xmins = conn.execute(
            "SELECT (SELECT array_agg(xmin::text) FROM data.hot_blocks), (SELECT array_agg(xmin::text) FROM data.hot_transactions), (SELECT array_agg(xmin::text) FROM data.hot_logs)"
        ).fetchone()
        assert write_block(conn, CHAIN_ID, hb.block, hb.txs, hb.logs) is False
        assert conn.execute(
            "SELECT (SELECT array_agg(xmin::text) FROM data.hot_blocks), (SELECT array_agg(xmin::text) FROM data.hot_transactions), (SELECT array_agg(xmin::text) FROM data.hot_logs)"
        ).fetchone() == xmins
        # a different block at the same height (one tx, no logs) replaces all three tables' rows
        other = dict(hb.block, block_hash=b"\x01" * 32)
        assert write_block(conn, CHAIN_ID, other, [dict(hb.txs[1], block_hash=other["block_hash"])], []) is True
        assert [count_rows(conn, CHAIN_ID, ds, n, n + 1) for ds in HOT_DATASETS] == [1, 1, 0]


def test_hot_rows_match_cryo_parquet_exactly(settings: Settings, dbs: Databases, chain: Chain, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    for i in range(4):
        chain.busy_block(i)
    chain.rpc("eth_sendTransaction", {"from": chain.accounts[8], "to": chain.accounts[9], "value": "0x1", "gasPrice": hex(2 * 10**9), "accessList": []})
    follow_until_caught_up(settings, dbs, chain)
    end = chain.head() + 1
    with connect(dbs.data_url) as conn:
        for ds in HOT_DATASETS:
            run_cryo(ds, 0, end, chain.url, tmp_path)
            (path,) = tmp_path.glob(f"*__{ds}__*.parquet")
            expected = pq.read_table(path)
            ours = read_range(conn, CHAIN_ID, ds, 0, end)
            assert ours.schema == expected.schema, ds
            assert ours.num_rows > 0 and ours.equals(expected), ds
