"""``trace-lite status`` at scale: a cold CLI process (wall time) against a bare interpreter.

Load (say it when quoting numbers): one chain_sync stream of ``--ranges`` ranges of 1,000
blocks, **committed in bulk as state rows by direct SQL** (``_scale_growth.bulk``: range,
succeeded task, attempt and dataset-version rows in one transaction; no Parquet, fake-marked),
the shape the daemon path leaves behind (``bench_scale.py --growth`` builds it that way too, less
its 200-range tail); ``--queued`` wake-up messages waiting in pgqueue and as many pending outbox
rows. Lite's default configuration: the embedded Postgres under ``TRACE_HOME`` (attached to,
already running), no URLs set.

Timed in one run, each a new process, ``--repeat`` times (median and best):
- ``python -c pass``: the interpreter's own start (the baseline);
- ``python -c "import trace_lite.cli"``: the CLI's import graph;
- ``trace-lite status --job J`` and ``--json`` (the console script, as a user runs it);
- ``trace-lite status`` with ``TRACE_STATE_URL``/``TRACE_DATA_URL`` set (no embedded attach);
and in this process: the status query, the queue overview.

Run: .venv/bin/python benchmarks/bench_cli.py [--ranges 100000] [--queued 1000] [--repeat 7]
Exit status 1 when the median ``trace-lite status`` is over ``--target`` seconds (1.0).
"""

from __future__ import annotations

import argparse
import atexit
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOB, STREAM, CHAIN_ID, CHUNK = "cli_bench", "blocks", 143, 1_000
PYTHON = sys.executable
TRACE_LITE = str(Path(sys.executable).with_name("trace-lite"))

QUEUE_FILL_SQL = """
INSERT INTO state.queue_messages (queue_name, payload)
SELECT 'task_wakeup', jsonb_build_object('task_id', gen_random_uuid())
FROM generate_series(1, %(n)s)
"""
OUTBOX_FILL_SQL = """
INSERT INTO state.outbox (outbox_id, topic, payload)
SELECT gen_random_uuid(), 'task_wakeup', jsonb_build_object('task_id', gen_random_uuid())
FROM generate_series(1, %(n)s)
"""


def job_file(home: Path, ranges: int) -> Path:
    path = home / f"{JOB}.yaml"
    path.write_text(
        f"""kind: chain_sync
name: {JOB}
chain_id: {CHAIN_ID}
mode: {{kind: fixed_target, from_block: 0, to_block: {ranges * CHUNK}}}
streams:
  {STREAM}: {{cryo_dataset_name: blocks, rpc_pool: standard, chunk_size: {CHUNK}, max_inflight: 8}}
"""
    )
    return path


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + sys) seconds of one new process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranges", type=int, default=100_000)
    ap.add_argument("--queued", type=int, default=1_000, help="wake-ups queued, outbox rows")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--target", type=float, default=1.0, help="seconds, median status")
    ap.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="TRACE_LITE",
        help="another checkout's trace-lite (e.g. /work/main/.venv/bin/trace-lite) timed on the "
        "same state, for a before/after in one run",
    )
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).parent))
    import _scale_growth as g

    from trace_core.db.embedded import stop_embedded
    from trace_core.runtime import Runtime
    from trace_core.settings import load_settings

    home = Path(tempfile.mkdtemp(prefix="trace-bench-cli-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    for var in ("TRACE_STATE_URL", "TRACE_DATA_URL", "TRACE_DATABASE_URL", "TRACE_ORG_ID"):
        os.environ.pop(var, None)
    os.environ["TRACE_HOME"] = str(home)
    atexit.register(stop_embedded, home)  # registered after rmtree: runs first
    rt = Runtime(load_settings())
    env = dict(os.environ)

    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run([TRACE_LITE, "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    migrate_s = time.perf_counter() - t0
    bulk_s = g.bulk(
        rt, job_file(home, args.ranges), JOB, STREAM, CHUNK, CHAIN_ID, args.ranges * CHUNK
    )
    with rt.state() as conn:
        conn.execute(QUEUE_FILL_SQL, {"n": args.queued})
        conn.execute(OUTBOX_FILL_SQL, {"n": args.queued})
        conn.execute("ANALYZE")
    print(
        f"state: {args.ranges:,} committed ranges of {CHUNK:,} blocks (direct SQL, "
        f"{bulk_s:.1f}s), {args.queued:,} queued wake-ups and outbox rows; embedded Postgres "
        f"(first `trace-lite migrate` {migrate_s:.1f}s)"
    )

    urls = dict(env, TRACE_STATE_URL=rt.dbs.state_url, TRACE_DATA_URL=rt.dbs.data_url)
    cases: list[tuple[str, list[str], dict[str, str]]] = [
        ("python -c pass (baseline)", [PYTHON, "-c", "pass"], env),
        ("python -c 'import trace_lite.cli'", [PYTHON, "-c", "import trace_lite.cli"], env),
        ("trace-lite --help", [TRACE_LITE, "--help"], env),
        ("trace-lite status --job", [TRACE_LITE, "status", "--job", JOB], env),
        ("trace-lite status --job --json", [TRACE_LITE, "status", "--job", JOB, "--json"], env),
        ("trace-lite status (all jobs)", [TRACE_LITE, "status"], env),
        ("trace-lite status --job, URLs set", [TRACE_LITE, "status", "--job", JOB], urls),
    ]
    for i, other in enumerate(args.also, 1):
        cases.append((f"[also {i}] status --job", [other, "status", "--job", JOB], env))
    for _, argv, case_env in cases:  # warm the page cache once
        timed(argv, case_env)
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _ in range(args.repeat):  # interleaved, so load swings hit every case alike
        for name, argv, case_env in cases:
            wall, used = timed(argv, case_env)
            times[name].append(wall)
            cpu[name].append(used)

    from trace_core.chain_sync.status import job_status
    from trace_core.cli.main import queue_overview

    query_s, queue_s = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        with rt.state() as conn:
            job_status(conn, rt.settings.org_id, JOB)
        query_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        queue_overview(rt)
        queue_s.append(time.perf_counter() - t0)
    rt.close()

    base = statistics.median(times[cases[0][0]])
    print(
        f"\n{args.repeat} cold processes each (interleaved); load average {load_before:.2f} "
        f"before, {os.getloadavg()[0]:.2f} after (2 cores, shared)\n"
    )
    print(
        f"{'wall (CPU: user + sys)':36} {'median s':>9} {'best s':>7} {'vs python':>9} "
        f"{'+ python s':>10} {'CPU s':>6}"
    )
    for name, _, _ in cases:
        med = statistics.median(times[name])
        print(
            f"{name:36} {med:>9.3f} {min(times[name]):>7.3f} {med / base:>8.1f}x "
            f"{med - base:>10.3f} {statistics.median(cpu[name]):>6.2f}"
        )
    for i, other in enumerate(args.also, 1):
        print(f"[also {i}] = {other}")
    print(
        f"\nin process: status query {statistics.median(query_s) * 1000:.0f} ms, queue overview "
        f"{statistics.median(queue_s) * 1000:.1f} ms (median of {args.repeat})"
    )
    status_med = statistics.median(times["trace-lite status --job"])
    ok = status_med <= args.target
    print(
        f"target: `trace-lite status` <= {args.target:g}s at {args.ranges:,} ranges: "
        f"{'met' if ok else 'NOT met'} ({status_med:.2f}s)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
