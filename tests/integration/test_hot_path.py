"""Hot path on a real anvil chain, real Postgres and real DuckDB: follow, reorg, crash, compact."""

from __future__ import annotations

import os
import signal
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
from trace_core.hot.finality import final_end, finality_depth, plan_ranges
from trace_core.hot.follower import DATASET_EVENTS, FollowResult, follow_once, load_cursor
from trace_core.hot.tables import HOT_DATASETS, count_rows, read_range, rows_from_rpc, write_block
from trace_core.settings import Settings
from trace_lite.devtools.devchain import DevChain

CHAIN_ID = 31337
TOPIC = "0x" + "ab" * 32
# Runtime: MSTORE 0xaa at 0; LOG2(mem[0:32], TOPIC, CALLER); STOP.
EMITTER_RUNTIME = "60aa600052" + "33" + "7f" + "ab" * 32 + "60206000a2" + "00"


class Chain:
    """A live anvil process and a few JSON-RPC helpers (mine, transact, snapshot, revert)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(timeout=10)
        self.accounts: list[str] = []
        self.emitter: str | None = None

    def rpc(self, method: str, *params: Any) -> Any:
        reply = self.http.post(
            self.url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
        ).json()
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
        _wait_for(
            lambda: self.rpc("eth_getTransactionReceipt", tx) is not None, "the emitter deployment"
        )
        self.emitter = self.rpc("eth_getTransactionReceipt", tx)["contractAddress"]

    def busy_block(self, i: int) -> None:
        """Mine one block holding an emitting call, a legacy transfer and an EIP-1559 transfer."""
        assert self.emitter is not None
        a = self.accounts
        self.rpc("evm_setAutomine", False)
        try:
            self.rpc(
                "eth_sendTransaction", {"from": a[1 + i % 3], "to": self.emitter, "data": "0x01"}
            )
            self.rpc(
                "eth_sendTransaction",
                {"from": a[4], "to": a[5], "value": hex(10**18 + i), "gasPrice": hex(3 * 10**9)},
            )
            self.rpc("eth_sendTransaction", {"from": a[6], "to": a[7], "value": hex(i + 1)})
            self.rpc("evm_mine")
        finally:
            self.rpc("evm_setAutomine", True)

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def chain() -> Iterator[Chain]:
    """A fresh archive anvil (DevChain, 3 seeded blocks; anvil_reorg needs history) + an emitter."""
    with DevChain.start(blocks=3, seed=1, archive=True) as dev:
        c = Chain(dev.rpc_url)
        try:
            c.setup_emitter()
            yield c
        finally:
            c.close()


def _wait_for(pred: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def follow_until_caught_up(
    settings: Settings, dbs: Databases, chain: Chain, **kw: Any
) -> list[FollowResult]:
    results = []
    for _ in range(200):
        r = follow_once(
            settings, dbs, CHAIN_ID, chain.url, **{"max_blocks": 50, "start_block": 0, **kw}
        )
        results.append(r)
        if r.cursor == chain.head() and r.ingested == 0:
            return results
    raise AssertionError("follower did not catch up")


def assert_hot_equals_chain(dbs: Databases, chain: Chain) -> None:
    """Every block 0..head is stored once with the chain's hash, and tx/log counts match."""
    head = chain.head()
    with connect(dbs.data_url) as conn:
        blocks = conn.execute(
            "SELECT block_number, block_hash FROM data.hot_blocks WHERE chain_id = %s ORDER BY 1",
            (CHAIN_ID,),
        ).fetchall()
        txs = dict(
            conn.execute(
                "SELECT block_number, count(*) FROM data.hot_transactions WHERE chain_id = %s GROUP BY 1",
                (CHAIN_ID,),
            ).fetchall()
        )
        logs = dict(
            conn.execute(
                "SELECT block_number, count(*) FROM data.hot_logs WHERE chain_id = %s GROUP BY 1",
                (CHAIN_ID,),
            ).fetchall()
        )
        # rows whose block is not the stored block of that height: orphans of a reorg (above
        # a new, lower head too, where the loop below would never look)
        orphans = conn.execute(
            "SELECT 'transaction', t.block_number FROM data.hot_transactions t "
            "LEFT JOIN data.hot_blocks b ON (b.chain_id, b.block_number, b.block_hash) = "
            "(t.chain_id, t.block_number, t.block_hash) WHERE t.chain_id = %(c)s "
            "AND b.block_number IS NULL UNION ALL "
            "SELECT 'log', l.block_number FROM data.hot_logs l "
            "LEFT JOIN data.hot_blocks b ON (b.chain_id, b.block_number, b.block_hash) = "
            "(l.chain_id, l.block_number, l.block_hash) WHERE l.chain_id = %(c)s "
            "AND b.block_number IS NULL",
            {"c": CHAIN_ID},
        ).fetchall()
    assert orphans == [], f"hot rows of blocks that are not stored: {orphans[:5]}"
    assert [n for n, _ in blocks] == list(range(head + 1))
    for n, h in blocks:
        b = chain.block(n, full=True)
        assert "0x" + bytes(h).hex() == b["hash"], f"block {n}"
        assert txs.get(n, 0) == len(b["transactions"]), f"txs of block {n}"
        receipts = chain.rpc("eth_getBlockReceipts", hex(n))
        assert logs.get(n, 0) == sum(len(r["logs"]) for r in receipts), f"logs of block {n}"


def run_cryo(dataset: str, start: int, end: int, rpc: str, out: Path) -> None:
    """cryo.freeze in a child process: its runtime upsets CPython's AST recursion counter in
    the caller, and it sometimes crashes at interpreter exit, after writing everything (so
    the child leaves with ``os._exit``)."""
    code = (
        "import os, sys, cryo; cryo.freeze(sys.argv[1], blocks=[sys.argv[2]], rpc=sys.argv[3],"
        " output_dir=sys.argv[4], no_verbose=True); sys.stdout.flush(); os._exit(0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, dataset, f"{start}:{end}", rpc, str(out)],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]


def committed_events(dbs: Databases) -> list[dict[str, Any]]:
    with connect(dbs.state_url) as conn:
        rows = conn.execute(
            "SELECT payload FROM state.outbox WHERE topic = %s ORDER BY created_at, payload->>'range_start'",
            (DATASET_EVENTS,),
        ).fetchall()
    return [r[0] for r in rows]


# --- follower ----------------------------------------------------------------------------


def test_follower_ingests_consecutive_blocks_while_anvil_mines(
    settings: Settings, dbs: Databases, chain: Chain
) -> None:
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
            follow_once(
                settings, dbs, CHAIN_ID, chain.url, max_blocks=20, start_block=0, batch_size=7
            )
    finally:
        stop.set()
        t.join()
    follow_until_caught_up(settings, dbs, chain)
    assert chain.head() >= 120
    assert_hot_equals_chain(dbs, chain)
    with connect(dbs.state_url) as conn:
        cur = load_cursor(conn, settings.org_id, CHAIN_ID)
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
def test_reorg_of_depth_k_replaces_orphaned_rows(
    settings: Settings, dbs: Databases, chain: Chain, k: int
) -> None:
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
    orphan_txs = {
        t["hash"]
        for n in range(base + 1, old_tip + 1)
        for t in chain.block(n, True)["transactions"]
    }
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


def test_chain_that_got_shorter_is_rolled_back_before_it_grows(
    settings: Settings, dbs: Databases, chain: Chain
) -> None:
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


def test_reorg_deeper_than_limit_fails_and_keeps_rows(
    settings: Settings, dbs: Databases, chain: Chain
) -> None:
    from trace_core.errors import ReorgTooDeep

    chain.mine(3)
    snap = chain.rpc("evm_snapshot")
    chain.mine(5)
    follow_until_caught_up(settings, dbs, chain)
    stored = chain.head() + 1
    chain.rpc("evm_revert", snap)
    chain.busy_block(1)
    chain.mine(6)
    with pytest.raises(ReorgTooDeep):
        follow_once(settings, dbs, CHAIN_ID, chain.url, max_blocks=10, max_reorg_depth=2)
    with connect(dbs.data_url) as conn:
        (n,) = conn.execute("SELECT count(*) FROM data.hot_blocks").fetchone() or (0,)
    assert n == stored  # every block as first ingested: nothing was deleted
    assert invalidations(dbs) == []


def test_find_common_ancestor_edges() -> None:
    from trace_core.errors import ReorgTooDeep

    ours = {5: b"a5", 6: b"a6", 7: b"a7"}
    theirs = {5: b"a5", 6: b"b6", 7: b"b7", 8: b"b8"}
    kw: dict[str, Any] = {"stored_hash": ours.get, "canonical_hash": theirs.get, "chain_id": 1}
    assert reorg.find_common_ancestor(tip=7, lowest_stored=5, max_depth=10, **kw) == reorg.Ancestor(
        5, b"a5"
    )
    # the whole stored span is orphaned: re-ingest from the lowest stored block, no parent check
    assert reorg.find_common_ancestor(tip=7, lowest_stored=6, max_depth=10, **kw) == reorg.Ancestor(
        5, None
    )
    with pytest.raises(ReorgTooDeep):
        reorg.find_common_ancestor(tip=7, lowest_stored=6, max_depth=10, finalized_below=6, **kw)
    with pytest.raises(ReorgTooDeep):
        reorg.find_common_ancestor(tip=7, lowest_stored=5, max_depth=1, **kw)


# --- writes ------------------------------------------------------------------------------


def _hot_block(chain: Chain, n: int) -> Any:
    return rows_from_rpc(
        CHAIN_ID, chain.block(n, full=True), chain.rpc("eth_getBlockReceipts", hex(n))
    )


def test_redelivered_block_changes_nothing_and_other_block_replaces(
    settings: Settings, dbs: Databases, chain: Chain
) -> None:
    chain.busy_block(0)
    n = chain.head()
    hb = _hot_block(chain, n)
    assert len(hb.txs) == 3 and len(hb.logs) == 1
    with connect(dbs.data_url, autocommit=True) as conn:
        assert write_block(conn, settings.org_id, CHAIN_ID, hb.block, hb.txs, hb.logs) is True
        xmins = conn.execute(
            "SELECT (SELECT array_agg(xmin::text) FROM data.hot_blocks), (SELECT array_agg(xmin::text) FROM data.hot_transactions), (SELECT array_agg(xmin::text) FROM data.hot_logs)"
        ).fetchone()
        assert write_block(conn, settings.org_id, CHAIN_ID, hb.block, hb.txs, hb.logs) is False
        assert (
            conn.execute(
                "SELECT (SELECT array_agg(xmin::text) FROM data.hot_blocks), (SELECT array_agg(xmin::text) FROM data.hot_transactions), (SELECT array_agg(xmin::text) FROM data.hot_logs)"
            ).fetchone()
            == xmins
        )
        # a different block at the same height (one tx, no logs) replaces all three tables' rows
        other = dict(hb.block, block_hash=b"\x01" * 32)
        assert (
            write_block(
                conn,
                settings.org_id,
                CHAIN_ID,
                other,
                [dict(hb.txs[1], block_hash=other["block_hash"])],
                [],
            )
            is True
        )
        assert [
            count_rows(conn, settings.org_id, CHAIN_ID, ds, n, n + 1) for ds in HOT_DATASETS
        ] == [1, 1, 0]


def test_hot_rows_match_cryo_parquet_exactly(
    settings: Settings, dbs: Databases, chain: Chain, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    for i in range(4):
        chain.busy_block(i)
    chain.rpc(
        "eth_sendTransaction",
        {
            "from": chain.accounts[8],
            "to": chain.accounts[9],
            "value": "0x1",
            "gasPrice": hex(2 * 10**9),
            "accessList": [],
        },
    )
    follow_until_caught_up(settings, dbs, chain)
    end = chain.head() + 1
    with connect(dbs.data_url) as conn:
        for ds in HOT_DATASETS:
            run_cryo(ds, 0, end, chain.url, tmp_path)
            (path,) = tmp_path.glob(f"*__{ds}__*.parquet")
            expected = pq.read_table(path)
            ours = read_range(conn, settings.org_id, CHAIN_ID, ds, 0, end)
            assert ours.schema == expected.schema, ds
            assert ours.num_rows > 0 and ours.equals(expected), ds


# --- compaction and federation -----------------------------------------------------------


def chain_totals(chain: Chain) -> dict[str, int]:
    head = chain.head()
    txs = logs = 0
    for n in range(head + 1):
        receipts = chain.rpc("eth_getBlockReceipts", hex(n))
        txs += len(receipts)
        logs += sum(len(r["logs"]) for r in receipts)
    return {"blocks": head + 1, "transactions": txs, "logs": logs}


def federated_count(settings: Settings, dbs: Databases, dataset: str) -> tuple[int, int, int]:
    """(total, cold, hot): DuckDB over the committed Parquet + a SQL count on the hot table."""
    import duckdb

    from trace_core.hot.federation import federated_sources

    fs = federated_sources(settings, dbs, CHAIN_ID, dataset)
    cold = 0
    select = fs.duckdb_cold_select()
    if select:
        row = duckdb.sql(f"SELECT count(*) FROM ({select})").fetchone()
        cold = int(row[0]) if row else 0
    with connect(dbs.data_url) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {fs.hot_table} WHERE {fs.hot_predicate()}"
        ).fetchone()
    hot = int(row[0]) if row else 0
    return cold + hot, cold, hot


def test_compaction_commits_final_ranges_and_federation_counts_each_block_once(
    settings: Settings, dbs: Databases, chain: Chain, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    from trace_core.hot.compact import compact_once, compact_range
    from trace_core.hot.federation import federated_sources, hot_boundary
    from trace_core.hot.prune import delete_compacted

    for i in range(12):
        chain.busy_block(i)
        chain.mine(i % 4)
    chain.mine(90 - chain.head())
    follow_until_caught_up(settings, dbs, chain)
    head = chain.head()
    assert head == 90
    totals = chain_totals(chain)
    assert totals["logs"] > 0
    for ds in HOT_DATASETS:
        assert federated_count(settings, dbs, ds) == (totals[ds], 0, totals[ds])

    result = compact_once(settings, dbs, CHAIN_ID, range_size=20, finality_depth_override=6)
    assert result.final_end == final_end(head, 6) == 85
    ranges = [(0, 20), (20, 40), (40, 60), (60, 80)]
    assert sorted({(c.range_start, c.range_end) for c in result.committed}) == ranges
    assert all(c.newly_registered for c in result.committed) and len(result.committed) == 12
    with connect(dbs.data_url) as data, connect(dbs.state_url) as state:
        for c in result.committed:  # cold row counts equal the hot rows they replace
            assert c.row_count == count_rows(
                data, settings.org_id, CHAIN_ID, c.dataset_key, c.range_start, c.range_end
            )
        for ds in HOT_DATASETS:
            assert hot_boundary(state, CHAIN_ID, ds) == 80
        recorded = state.execute(
            "SELECT count(*) FROM state.partition_versions WHERE hot_deleted_at IS NULL"
        ).fetchone()
    assert recorded == (12,)
    # between commit and hot delete: hot rows below the boundary are still there, not counted twice
    for ds in HOT_DATASETS:
        total, cold, hot = federated_count(settings, dbs, ds)
        assert total == totals[ds] and cold > 0
    assert federated_count(settings, dbs, "blocks")[2] == head + 1 - 80

    # idempotent: the same range maps to the same version, registered once
    again = compact_range(settings, dbs, CHAIN_ID, "logs", 20, 40)
    first = next(c for c in result.committed if (c.dataset_key, c.range_start) == ("logs", 20))
    assert (again.dataset_version, again.newly_registered) == (first.dataset_version, False)
    assert (
        compact_once(settings, dbs, CHAIN_ID, range_size=20, finality_depth_override=6).committed
        == []
    )
    with connect(dbs.state_url) as state:
        assert state.execute("SELECT count(*) FROM state.dataset_versions").fetchone() == (12,)

    # the committed Parquet is what cryo itself writes for the range
    blocks_fs = federated_sources(settings, dbs, CHAIN_ID, "blocks")
    run_cryo("blocks", 20, 40, chain.url, tmp_path)
    (cryo_file,) = tmp_path.glob("*__blocks__*.parquet")
    (ours,) = [f for f in blocks_fs.cold_version_files if "__00000020_to_00000039" in f]
    assert pq.read_table(ours).equals(pq.read_table(cryo_file))

    deleted = delete_compacted(settings, dbs, CHAIN_ID)
    expected_deleted = {
        ds: sum(c.row_count for c in result.committed if c.dataset_key == ds) for ds in HOT_DATASETS
    }
    assert deleted == expected_deleted
    with connect(dbs.data_url) as data:
        assert data.execute("SELECT min(block_number) FROM data.hot_blocks").fetchone() == (80,)
    for ds in HOT_DATASETS:
        assert federated_count(settings, dbs, ds) == (
            totals[ds],
            expected_deleted[ds],
            totals[ds] - expected_deleted[ds],
        )
    assert delete_compacted(settings, dbs, CHAIN_ID) == {ds: 0 for ds in HOT_DATASETS}

    # the follower keeps going above the boundary; a later compaction continues from it
    for i in range(3):
        chain.busy_block(50 + i)
    chain.mine(35)
    follow_until_caught_up(settings, dbs, chain)
    later = compact_once(
        settings, dbs, CHAIN_ID, range_size=20, finality_depth_override=6, delete_hot=True
    )
    assert sorted({(c.range_start, c.range_end) for c in later.committed}) == [
        (80, 100),
        (100, 120),
    ]
    totals = chain_totals(chain)
    for ds in HOT_DATASETS:
        assert federated_count(settings, dbs, ds)[0] == totals[ds]


def test_duckdb_union_of_cold_parquet_and_hot_postgres_rows(
    settings: Settings, dbs: Databases, chain: Chain
) -> None:
    import duckdb
    import duckdb_extensions

    from trace_core.hot.compact import compact_once
    from trace_core.hot.federation import federated_sources

    for i in range(6):
        chain.busy_block(i)
    chain.mine(30)
    follow_until_caught_up(settings, dbs, chain)
    with connect(dbs.data_url) as conn:
        expected = conn.execute(
            "SELECT count(*), sum(gas_used), sum(n_input_bytes) FROM data.hot_transactions"
        ).fetchone()
    compact_once(settings, dbs, CHAIN_ID, range_size=10, finality_depth_override=3, delete_hot=True)
    fs = federated_sources(settings, dbs, CHAIN_ID, "transactions")
    assert fs.boundary == 30 and fs.hot_gaps == []
    con = duckdb.connect(
        ":memory:", config={"extension_directory": str(settings.resolved_home() / "duckdb_ext")}
    )
    duckdb_extensions.import_extension("postgres_scanner", con=con)
    con.execute("LOAD postgres_scanner")
    con.execute(f"ATTACH '{dbs.data_url}' AS hot (TYPE postgres, READ_ONLY)")
    row = con.execute(
        f"SELECT count(*), sum(gas_used), sum(n_input_bytes) FROM ({fs.duckdb_cold_select()} UNION ALL BY NAME {fs.duckdb_hot_select('hot')})"
    ).fetchone()
    con.close()
    assert row is not None and expected is not None
    assert (int(row[0]), int(row[1]), int(row[2])) == (
        int(expected[0]),
        int(expected[1]),
        int(expected[2]),
    )


# --- crashes -----------------------------------------------------------------------------


def event_ranges(dbs: Databases, kind: str = "hot_range_committed") -> list[tuple[int, int]]:
    return sorted(
        (e["range_start"], e["range_end"]) for e in committed_events(dbs) if e["event"] == kind
    )


def assert_tiles(ranges: list[tuple[int, int]], end: int) -> None:
    """The ranges cover [0, end) exactly once: nothing lost, nothing announced twice."""
    assert ranges and ranges[0][0] == 0 and ranges[-1][1] == end
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False)), ranges


def test_rows_written_before_a_crash_are_adopted_once(
    settings: Settings, dbs: Databases, chain: Chain
) -> None:
    follow_until_caught_up(settings, dbs, chain)
    cursor_before = chain.head()
    for i in range(4):
        chain.busy_block(i)
    # the crashed step: its data transaction committed, its state transaction never ran
    with connect(dbs.data_url, autocommit=True) as conn:
        for n in range(cursor_before + 1, chain.head() + 1):
            hb = _hot_block(chain, n)
            write_block(conn, settings.org_id, CHAIN_ID, hb.block, hb.txs, hb.logs)
    r = follow_once(settings, dbs, CHAIN_ID, chain.url)
    assert (r.ingested, r.cursor) == (0, chain.head())
    assert event_ranges(dbs)[-1] == (cursor_before + 1, chain.head() + 1)
    assert_tiles(event_ranges(dbs), chain.head() + 1)
    assert_hot_equals_chain(dbs, chain)


def test_rollback_without_cursor_rewind_is_announced_after_restart(
    settings: Settings, dbs: Databases, chain: Chain
) -> None:
    base = chain.head()
    snap = chain.rpc("evm_snapshot")
    chain.busy_block(1)
    chain.busy_block(2)
    follow_until_caught_up(settings, dbs, chain)
    chain.rpc("evm_revert", snap)
    chain.busy_block(3)
    # the crashed step rolled the data back, then died before rewinding the cursor
    reorg.rollback_to(
        connect(dbs.data_url, autocommit=True),
        org_id=settings.org_id,
        chain_id=CHAIN_ID,
        ancestor=base,
        old_tip=base + 2,
        details={},
    )
    r = follow_once(settings, dbs, CHAIN_ID, chain.url)
    assert (r.ingested, r.cursor) == (1, base + 1)
    assert event_ranges(dbs, "hot_range_invalidated") == [(base + 1, base + 3)]
    assert_hot_equals_chain(dbs, chain)


FOLLOWER_CHILD = """
import sys
from trace_core.db.connection import Databases
from trace_core.hot.follower import follow_once
from trace_core.settings import load_settings

state, data, url = sys.argv[1:4]
settings = load_settings()
while True:
    follow_once(settings, Databases(state, data), 31337, url, max_blocks=3, start_block=0, batch_size=1)
"""


def test_follower_killed_mid_block_loses_and_duplicates_nothing(
    settings: Settings, dbs: Databases, chain: Chain
) -> None:
    for i in range(60):  # a backlog the child follows one block per batch
        chain.busy_block(i)
    env = {**os.environ, "TRACE_HOME": str(settings.resolved_home())}

    def stored() -> int:
        with connect(dbs.data_url) as conn:
            row = conn.execute("SELECT count(*) FROM data.hot_blocks").fetchone()
        return int(row[0]) if row else 0

    for round_ in range(3):
        target = 15 * (round_ + 1)
        chain.busy_block(100 + round_)  # the chain also moves between restarts
        child = subprocess.Popen(
            [sys.executable, "-c", FOLLOWER_CHILD, dbs.state_url, dbs.data_url, chain.url],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_for(lambda t=target: stored() >= t, "the child follower to make progress")  # type: ignore[misc]
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
        assert child.returncode == -signal.SIGKILL, (child.stderr.read() if child.stderr else b"")[
            -2000:
        ]
        assert stored() < chain.head() + 1  # killed while it still had blocks to follow
    follow_until_caught_up(settings, dbs, chain)
    assert_hot_equals_chain(dbs, chain)
    assert_tiles(event_ranges(dbs), chain.head() + 1)
    assert event_ranges(dbs, "hot_range_invalidated") == []


# --- operators through the worker --------------------------------------------------------


def test_operators_run_as_tasks(
    settings: Settings, dbs: Databases, chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    from trace_core.engine.execute import execute_task
    from trace_core.operators import block_follower, parquet_compact
    from trace_core.operators.base import OperatorRegistry
    from trace_core.runtime import Runtime
    from trace_core.tasks import lifecycle

    monkeypatch.setenv("TRACE_RPC_POOL_HOT_TEST_URL", chain.url)
    for i in range(3):
        chain.busy_block(i)
    chain.mine(30)
    registry = OperatorRegistry()
    block_follower.register(registry)
    parquet_compact.register(registry)
    rt = Runtime(settings, dbs)

    def run(operator: str, payload: dict[str, Any]) -> Any:
        task_id = uuid.uuid4()
        with connect(dbs.state_url, autocommit=True) as conn, conn.transaction():
            lifecycle.create_task(conn, task_id=task_id, operator=operator, payload=payload)
        return execute_task(rt, task_id, registry)

    out = run(
        "block_follower",
        {"chain_id": CHAIN_ID, "rpc_pool": "hot_test", "start_block": 0, "max_blocks": 500},
    )
    assert out.status == "succeeded", out.error
    assert out.outputs["cursor"] == chain.head() and out.outputs["ingested"] == chain.head() + 1
    out = run(
        "parquet_compact",
        {"chain_id": CHAIN_ID, "range_size": 10, "finality_depth": 2, "delete_hot": True},
    )
    assert out.status == "succeeded", out.error
    assert {(c["range_start"], c["range_end"]) for c in out.outputs["committed"]} == {
        (0, 10),
        (10, 20),
        (20, 30),
    }
    assert out.outputs["deleted_rows"]["blocks"] == 30
    again = run(
        "parquet_compact",
        {"chain_id": CHAIN_ID, "dataset_key": "blocks", "range_start": 10, "range_end": 20},
    )
    assert (
        again.status == "succeeded" and again.outputs["committed"][0]["newly_registered"] is False
    )
    bad = run("block_follower", {"chain_id": CHAIN_ID, "rpc_pool": "no_such_pool"})
    assert bad.status == "dead" and "TRACE_RPC_POOL_NO_SUCH_POOL_URL" in (bad.error or "")
    rt.close()


def test_concurrent_follower_step_is_skipped(
    settings: Settings, dbs: Databases, chain: Chain
) -> None:
    from trace_core.hot.follower import follower_lock

    with (
        connect(dbs.state_url, autocommit=True) as other,
        follower_lock(other, settings.org_id, CHAIN_ID) as got,
    ):
        assert got
        r = follow_once(settings, dbs, CHAIN_ID, chain.url, start_block=0)
        assert r.skipped and r.ingested == 0
    assert (
        follow_once(settings, dbs, CHAIN_ID, chain.url, start_block=0).ingested == chain.head() + 1
    )


def test_wrong_chain_is_refused(settings: Settings, dbs: Databases, chain: Chain) -> None:
    from trace_core.errors import ChainMismatch

    with pytest.raises(ChainMismatch):
        follow_once(settings, dbs, 1, chain.url, start_block=0)


def test_finality_and_range_planning() -> None:
    assert final_end(100, 64) == 37 and final_end(100, 0) == 100 and final_end(10, 64) == 0
    assert plan_ranges(0, 37, 10) == [(0, 10), (10, 20), (20, 30)]
    assert plan_ranges(5, 37, 10) == [(5, 10), (10, 20), (20, 30)]
    assert plan_ranges(30, 37, 10) == [] and plan_ranges(0, 40, 10, limit=2) == [(0, 10), (10, 20)]
    s = Settings(finality_depth=64, finality_depths={10: 3})
    assert (
        finality_depth(s, 10) == 3
        and finality_depth(s, 1) == 64
        and finality_depth(s, 1, override=5) == 5
    )
