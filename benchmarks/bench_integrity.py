"""integrity_check cost vs the sync that produced the data.

On a seeded anvil chain (``trace_lite.devtools.devchain``), a fixed_target job with streams blocks,
transactions and logs over ``[0, N)`` (ranges of ``--chunk`` blocks) is synced through the
worker path (dispatcher tick + ``execute_task``: real cryo, staging, commit) once: the
baseline. Then, per repetition:

* files only: ``verify(use_rpc=False)`` - every manifest and file re-read, sha256 and Parquet
  row counts compared, prefixes listed, rows/contiguity checked;
* files + chain: ``verify()`` - the same plus block hashes / parent links and per-block tx and
  log counts against the RPC (batched ``eth_getBlockByNumber`` and ``eth_getBlockReceipts``).

Medians over the repetitions. Postgres: ``TRACE_DATABASE_URL`` if set, else an embedded server.

    .venv/bin/python benchmarks/bench_integrity.py [--blocks 2000] [--chunk 500] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from _scratch import scratch_databases

from trace_core.chain_sync import store
from trace_core.chain_sync.yamlload import load_job_file
from trace_core.engine.dispatcher import dispatch_tick
from trace_core.engine.execute import execute_task
from trace_core.integrity.verify import verify
from trace_core.runtime import Runtime
from trace_core.settings import Settings
from trace_lite.devtools.devchain import DevChain

JOB = """kind: chain_sync
name: bench
chain_id: {chain_id}
mode: {{kind: fixed_target, from_block: 0, to_block: {blocks}}}
streams:
  blocks: {{cryo_dataset_name: blocks, rpc_pool: bench, chunk_size: {chunk}, max_inflight: 64}}
  transactions: {{cryo_dataset_name: transactions, rpc_pool: bench, chunk_size: {chunk}, max_inflight: 64}}
  logs: {{cryo_dataset_name: logs, rpc_pool: bench, chunk_size: {chunk}, max_inflight: 64}}
"""


def sync(rt: Runtime) -> int:
    ran = 0
    while True:
        dispatch_tick(rt)
        with rt.state() as conn:
            queued = [
                r[0]
                for r in conn.execute("SELECT task_id FROM state.tasks WHERE status = 'queued'")
            ]
        if not queued:
            return ran
        for task_id in queued:
            outcome = execute_task(rt, task_id)
            if outcome.status != "succeeded":
                raise SystemExit(f"sync failed: {outcome.error}")
            ran += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, DevChain.start(blocks=args.blocks, seed=11) as chain:
        home = Path(tmp)
        dbs = scratch_databases(home, "bench_integrity")
        os.environ["TRACE_RPC_POOL_BENCH_URL"] = chain.rpc_url
        rt = Runtime(Settings(home=home, state_url=dbs.state_url, data_url=dbs.data_url))  # type: ignore[arg-type]
        job_file = home / "bench.yaml"
        job_file.write_text(
            JOB.format(chain_id=chain.chain_id, blocks=args.blocks, chunk=args.chunk)
        )
        spec, raw = load_job_file(job_file)
        with rt.state() as conn:
            store.apply_job(conn, rt.settings.org_id, spec, raw, str(job_file))
        t0 = time.perf_counter()
        tasks = sync(rt)
        baseline = time.perf_counter() - t0
        timings: dict[str, list[float]] = {"files": [], "chain": []}
        ranges = 0
        for _ in range(args.reps):
            for label, use_rpc in (("files", False), ("chain", True)):
                t0 = time.perf_counter()
                reports = verify(rt, job="bench", use_rpc=use_rpc)
                timings[label].append(time.perf_counter() - t0)
                assert all(r.passed for r in reports), [r.as_json() for r in reports]
                assert all(r.rpc_checked == use_rpc for r in reports)
                ranges = sum(len(r.ranges) for r in reports)
        rt.close()
    files, full = (statistics.median(timings[k]) for k in ("files", "chain"))
    print(
        f"{args.blocks} blocks x 3 streams, {tasks} ranges synced, {ranges} verified, "
        f"median of {args.reps}"
    )
    print(f"{'step':<44}{'seconds':>9}{'blocks/s':>10}{'vs sync':>9}")
    rows = [
        ("sync: cryo_ingest via the worker (baseline)", baseline),
        ("verify --no-rpc: files, sha256, rows", files),
        ("verify: files + hashes and counts vs RPC", full),
    ]
    for label, secs in rows:
        print(f"{label:<44}{secs:>9.3f}{args.blocks / secs:>10.0f}{secs / baseline:>9.2f}")


if __name__ == "__main__":
    main()
