"""Hot path throughput: the block follower and compaction vs bare ``cryo.freeze``.

On a seeded anvil chain (``trace_lite.devtools.devchain``), per repetition:

* baseline: ``cryo.freeze(["blocks", "transactions", "logs"])`` of blocks ``[0, N)`` into an
  empty directory (extraction to Parquet, no Postgres, no registry);
* follower: ``follow_once`` from block 0 until caught up (JSON-RPC batches of blocks + receipts,
  rows upserted into ``data.hot_*``, cursor + outbox event per batch), hot tables emptied first;
* compaction: ``compact_once`` of the final ranges right after the follower filled the hot
  tables (ranges of 500 blocks, Parquet of all three datasets, staged, committed as versions,
  hot rows deleted).
* follower with row-level security off (issue 22's baseline): the same follower on a second
  pair of databases where every table's RLS is disabled and the follower connects as the
  configured user (no ``trace_system`` role, no org stamped), interleaved with the run above
  (RLS forced, as ``trace_system``, new rows stamped with the org); target: within 10%.

Medians over the repetitions. Postgres: ``TRACE_DATABASE_URL`` if set, else an embedded server.

    .venv/bin/python benchmarks/bench_hot_path.py [--blocks 2000] [--reps 3] [--batch-size 50]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import cryo
import psycopg
from _scratch import scratch_databases

from trace_core.db.connection import Databases
from trace_core.hot.compact import compact_once
from trace_core.hot.follower import follow_once
from trace_core.settings import Settings
from trace_core.storage.local import LocalStore
from trace_lite.devtools.devchain import DevChain

RESET_HOT = (
    "TRUNCATE data.hot_blocks, data.hot_transactions, data.hot_logs, data.data_invalidations"
)
RESET_FOLLOWER = "TRUNCATE state.hot_follower_cursors, state.outbox"
RESET_COLD = ["TRUNCATE state.partition_versions", "DELETE FROM state.dataset_versions"]


@contextlib.contextmanager
def databases(home: Path) -> Iterator[Databases]:
    """Fresh migrated databases on TRACE_DATABASE_URL or a private embedded server."""
    yield scratch_databases(home, "bench_hot")


def reset(dbs: Databases) -> None:
    """Empty the hot tables, the follower's cursor and the registry's versions."""
    with psycopg.connect(dbs.data_url, autocommit=True) as data:
        data.execute(RESET_HOT)
    with psycopg.connect(dbs.state_url, autocommit=True) as st:
        for stmt in [RESET_FOLLOWER, *RESET_COLD]:
            st.execute(stmt)


def time_cryo(url: str, blocks: int, root: Path) -> float:
    out = root / f"cryo_{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    cryo.freeze(
        ["blocks", "transactions", "logs"], blocks=[f"0:{blocks}"], rpc=url, output_dir=str(out),
        no_verbose=True,
    )  # fmt: skip
    return time.perf_counter() - t0


def without_rls(dbs: Databases) -> None:
    """Disable row-level security on every table of both databases (the pre-tenancy setup)."""
    for url in (dbs.state_url, dbs.data_url):
        with psycopg.connect(url, autocommit=True) as conn:
            tables = conn.execute(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname IN ('state', 'data') AND c.relrowsecurity"
            ).fetchall()
            for (table,) in tables:
                conn.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
                conn.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")


def time_follow(settings: Settings, dbs: Databases, chain: DevChain, batch: int) -> float:
    reset(dbs)
    head = chain.head()
    t0 = time.perf_counter()
    while True:
        r = follow_once(
            settings, dbs, chain.chain_id, chain.rpc_url, 10_000, start_block=0, batch_size=batch
        )
        if r.cursor == head:
            break
    return time.perf_counter() - t0


def time_compact(
    settings: Settings, dbs: Databases, chain: DevChain, root: Path
) -> tuple[float, int]:
    store = LocalStore(root / f"store_{uuid.uuid4().hex[:8]}")
    t0 = time.perf_counter()
    result = compact_once(
        settings, dbs, chain.chain_id, store=store, range_size=500,
        finality_depth_override=1, delete_hot=True, max_ranges=1000,
    )  # fmt: skip
    return time.perf_counter() - t0, len(result.committed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_hot_") as tmp:
        root = Path(tmp)
        os.environ.setdefault("XDG_RUNTIME_DIR", tmp)
        with DevChain.start(blocks=args.blocks, seed=11) as chain, databases(root / "pg") as dbs:
            settings = Settings(home=root / "home", state_url=dbs.state_url, data_url=dbs.data_url)  # type: ignore[arg-type]
            plain = scratch_databases(root / "pg", "bench_hot_norls")
            without_rls(plain)
            plain_settings = Settings(
                home=root / "home", state_url=plain.state_url, data_url=plain.data_url,
                db_system_role="",
            )  # type: ignore[arg-type]  # fmt: skip
            off_s: list[float] = []
            txs = chain.seed_summary.transactions(0, args.blocks)
            logs = chain.seed_summary.logs(0, args.blocks)
            time_cryo(chain.rpc_url, args.blocks, root)  # warm-up
            cryo_s, follow_s, compact_s = [], [], []
            versions = 0
            for rep in range(args.reps):
                cryo_s.append(time_cryo(chain.rpc_url, args.blocks, root))
                # RLS off and on alternate which goes first (a noisy neighbour hits both alike)
                for rls in (False, True) if rep % 2 else (True, False):
                    if rls:
                        follow_s.append(time_follow(settings, dbs, chain, args.batch_size))
                    else:
                        off_s.append(time_follow(plain_settings, plain, chain, args.batch_size))
                seconds, versions = time_compact(settings, dbs, chain, root)
                compact_s.append(seconds)
    c, f, k, o = (statistics.median(x) for x in (cryo_s, follow_s, compact_s, off_s))
    print(
        f"chain: {args.blocks} blocks, {txs} transactions, {logs} logs; follower batch {args.batch_size}"
    )
    print(f"{'step':<42}{'seconds':>9}{'blocks/s':>10}{'vs cryo':>9}")
    print(f"{'bare cryo.freeze (baseline)':<42}{c:>9.3f}{args.blocks / c:>10.0f}{1.0:>9.2f}")
    print(f"{'follower: RPC -> hot tables':<42}{f:>9.3f}{args.blocks / f:>10.0f}{f / c:>9.2f}")
    label = f"compaction: hot -> {versions} versions + delete"
    print(f"{label:<42}{k:>9.3f}{args.blocks / k:>10.0f}{k / c:>9.2f}")
    print(
        f"{'follower, RLS off (no roles, no org)':<42}{o:>9.3f}{args.blocks / o:>10.0f}{o / c:>9.2f}"
    )
    slower = f / o - 1
    verdict = "within 10%" if slower <= 0.10 else "OVER 10%"
    print(f"follower with RLS on vs off: {slower:+.1%} time ({verdict}); loadavg {os.getloadavg()}")


if __name__ == "__main__":
    main()
