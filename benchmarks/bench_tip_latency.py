"""Tip latency of the hot follower: a block mined -> its row in ``data.hot_blocks``.

Baseline: the follower as a sensor tick (before it moved into a run), at its best: one
``follower_tick`` every 3 s, the sensor's ``minimum_interval_seconds`` (the daemon adds its own
loop and gRPC time on top, which this does not count). New: the follower's service run
(``trace_core.engine.services.serve`` with the hot follower's spec: a step every second,
holding the service lease). Both follow the same anvil chain, one block mined every
``--block-seconds``, measured in one run; medians and p95 per path, ratio against baseline.

    .venv/bin/python benchmarks/bench_tip_latency.py [--blocks 20] [--block-seconds 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from _scratch import scratch_databases

from trace_core.chain_sync import store
from trace_core.chain_sync.yamlload import parse_job
from trace_core.engine import services
from trace_core.engine.service_steps import FOLLOWER, follower_step
from trace_core.engine.services import serve
from trace_core.runtime import Runtime
from trace_core.settings import Settings
from trace_lite.devtools.devchain import DevChain

SENSOR_INTERVAL_SECONDS = 3.0  # the old trace_hot_follower sensor's minimum interval
LOG = logging.getLogger("bench_tip_latency")
JOB = """kind: chain_sync
name: tip
chain_id: {chain_id}
mode: {{kind: fixed_target, from_block: 0, to_block: 10}}
streams:
  blocks: {{cryo_dataset_name: blocks, rpc_pool: tip, chunk_size: 10, max_inflight: 1}}
hot: {{rpc_pool: tip, max_blocks_per_tick: 100}}
"""


def hot_head(rt: Runtime, chain_id: int) -> int:
    with psycopg.connect(rt.dbs.data_url) as conn:
        row = conn.execute(
            "SELECT max(block_number) FROM data.hot_blocks WHERE chain_id = %s", (chain_id,)
        ).fetchone()
    return -1 if row is None or row[0] is None else int(row[0])


def measure(
    rt: Runtime,
    chain: DevChain,
    follow: Callable[[threading.Event], None],
    blocks: int,
    block_seconds: float,
) -> list[float]:
    """Mine ``blocks`` blocks while ``follow`` runs; seconds from each mine to its hot row."""
    stop = threading.Event()
    follower = threading.Thread(target=follow, args=(stop,), daemon=True)
    follower.start()
    deadline = time.monotonic() + 60
    while hot_head(rt, chain.chain_id) < chain.head():  # catch up with the chain first
        assert time.monotonic() < deadline, "follower never caught up"
        time.sleep(0.05)
    latencies = []
    for _ in range(blocks):
        chain.mine(1)
        mined_at, target = time.monotonic(), chain.head()
        while hot_head(rt, chain.chain_id) < target:
            time.sleep(0.02)
        latencies.append(time.monotonic() - mined_at)
        time.sleep(max(0.0, block_seconds - latencies[-1]))
    stop.set()
    follower.join()
    return latencies


def sensor_cadence(rt: Runtime) -> Callable[[threading.Event], None]:
    def follow(stop: threading.Event) -> None:
        cursor: str | None = None
        while not stop.is_set():
            cursor = follower_step(rt, cursor, LOG).cursor or cursor
            stop.wait(SENSOR_INTERVAL_SECONDS)

    return follow


def service_run(rt: Runtime, seconds: float) -> Callable[[threading.Event], None]:
    def follow(stop: threading.Event) -> None:
        def end_on_stop() -> None:  # the run ends at its next renewal once its lease is gone
            stop.wait()
            services.release(rt, "hot_follower", "bench-run")

        threading.Thread(target=end_on_stop, daemon=True).start()
        serve(rt, FOLLOWER, "bench-run", seconds, LOG, lambda event: None)

    return follow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--block-seconds", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, DevChain.start(blocks=20, seed=1) as chain:
        home = Path(tmp)
        dbs = scratch_databases(home, "bench_tip")
        os.environ["TRACE_RPC_POOL_TIP_URL"] = chain.rpc_url
        rt = Runtime(Settings(home=home, lease_seconds=30), dbs)
        spec, raw = parse_job(JOB.format(chain_id=chain.chain_id), source="tip.yaml")
        with rt.state() as conn:
            store.apply_job(conn, rt.settings.org_id, spec, raw, "tip.yaml")
        n, gap = args.blocks, args.block_seconds
        run_seconds = n * gap + 60
        results = {
            "sensor tick every 3 s (baseline)": measure(rt, chain, sensor_cadence(rt), n, gap),
            "service run, step every 1 s": measure(rt, chain, service_run(rt, run_seconds), n, gap),
        }
    base = statistics.median(next(iter(results.values())))
    print(f"tip latency: block mined -> hot row; {n} blocks, one every {gap} s")
    print(f"{'path':36} {'median s':>9} {'p95 s':>7} {'max s':>7} {'vs baseline':>12}")
    for name, lat in results.items():
        p95 = statistics.quantiles(lat, n=20, method="inclusive")[-1] if len(lat) > 1 else lat[0]
        med = statistics.median(lat)
        print(f"{name:36} {med:9.2f} {p95:7.2f} {max(lat):7.2f} {med / base:11.2f}x")


if __name__ == "__main__":
    main()
