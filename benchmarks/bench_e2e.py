"""End to end: a chain_sync job of blocks, transactions and logs through Trace vs bare cryo.

One anvil chain (``trace_lite.devtools.devchain``, real transfers and events) and one fixed_target job
over ``[0, --blocks)`` in ranges of ``--chunk-size`` blocks, each stream with ``--max-inflight``
ranges in flight. Every path runs twice: against anvil directly, and through a loopback JSON-RPC
proxy (``trace_lite.devtools.rpcproxy``, its own process) that adds ``--latency-ms`` per HTTP request,
concurrently, to stand in for a remote node.

- **bare cryo** (the baseline): ``cryo.freeze`` of each dataset over the whole range, one
  dataset after another, cryo's default options (1,000-block chunks, 4 chunks and 100 requests
  at once). Median of ``--reps``. Two reference rows: the three datasets in one call, and one
  call per Trace range (what Trace's tasks run, one after another).
- **run --until-idle**: ``drive_until_idle`` with the real definitions in this process (what
  ``trace-lite run --until-idle`` does: sensors ticked, runs executed in process one after
  another), fresh databases, object store and Dagster home.
- **up (launched runs)**: ``trace-lite up`` (``dagster dev``: daemon, code server,
  ``QueuedRunCoordinator`` with Lite's 2 concurrent runs, ``DefaultRunLauncher``) on fresh
  databases; one stack serves both conditions (two jobs with their own pools and stream keys,
  after an unmeasured one-range warm-up job); torn down with ``trace-lite down``.
- **recovery**: ``trace-lite run --until-idle`` as a subprocess behind the proxy, SIGKILLed once
  ``--kill-after`` ranges are committed, then started again: time from the restart until every
  range is committed, next to ``TRACE_LEASE_SECONDS`` (target <= lease + 10 s).

Trace times run from the job's apply (database clock) to the last range's commit
(``completed_at``). Each Trace run is checked exact (rows per stream = the chain's).

    .venv/bin/python benchmarks/bench_e2e.py --quick 2>/tmp/bench_e2e.log    # ~3 minutes
    .venv/bin/python benchmarks/bench_e2e.py 2>/tmp/bench_e2e.log

Embedded Postgres (one server, fresh databases per path) under a temporary directory, or the
server at ``TRACE_DATABASE_URL``. Settings knobs (``TRACE_WORKER_BATCH_SIZE``, ...) pass
through from the environment to every Trace path.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from _e2e_report import (
    CONDITION_ORDER,
    Row,
    report,
    targets_met,
)
from _scratch import scratch_databases

from trace_core import profile
from trace_core.chain_sync.store import apply_job_file
from trace_core.datasets.registry import versions_for_stream
from trace_core.db.connection import Databases
from trace_core.operators.cryo_real import freeze
from trace_core.settings import Settings, load_settings
from trace_lite.devtools.devchain import DevChain
from trace_lite.devtools.rpcproxy import ProxyProcess, spawn_proxy
from trace_lite.stack import free_port

DATASETS = ("blocks", "transactions", "logs")
CONDITIONS: tuple[str, ...] = CONDITION_ORDER
REFERENCE_ROWS = True  # bare cryo's two reference rows (--baseline-only drops them)
# issue 25: on a 500-range backfill behind the 50 ms proxy (--ranges 500)
SEED = 11
TRACE_LITE = str(Path(sys.executable).parent / "trace-lite")

JOB_YAML = """kind: chain_sync
name: {name}
chain_id: {chain_id}
mode: {{kind: fixed_target, from_block: 0, to_block: {blocks}}}
streams:
{streams}"""
STREAM_YAML = (
    "  {key}: {{cryo_dataset_name: {dataset}, rpc_pool: {pool}, "
    "chunk_size: {chunk}, max_inflight: {inflight}}}\n"
)

# Progress of one job: committed and dead ranges, and the newest commit (epoch seconds).
PROGRESS_SQL = """
SELECT count(*) FILTER (WHERE r.status = 'completed'),
       count(*) FILTER (WHERE r.status = 'dead'),
       extract(epoch FROM max(r.completed_at))::float8
FROM state.chain_sync_scheduled_ranges r JOIN state.chain_sync_jobs j USING (job_id)
WHERE j.name = %s
"""
# Where a job's time went: first claim, attempts, seconds inside finished attempts.
ATTEMPTS_SQL = """
SELECT extract(epoch FROM min(a.started_at))::float8,
       count(*),
       count(*) FILTER (WHERE a.outcome = 'succeeded'),
       coalesce(sum(extract(epoch FROM a.finished_at - a.started_at))
                FILTER (WHERE a.outcome = 'succeeded'), 0)::float8
FROM state.task_attempts a
JOIN state.chain_sync_scheduled_ranges r USING (task_id)
JOIN state.chain_sync_jobs j USING (job_id)
WHERE j.name = %s
"""
# Every finished attempt of one job: (start, end) epochs, for idle time and parallelism.
INTERVALS_SQL = """
SELECT extract(epoch FROM a.started_at)::float8, extract(epoch FROM a.finished_at)::float8
FROM state.task_attempts a
JOIN state.chain_sync_scheduled_ranges r USING (task_id)
JOIN state.chain_sync_jobs j USING (job_id)
WHERE j.name = %s AND a.finished_at IS NOT NULL ORDER BY 1
"""
# Task states of one job's ranges (at the kill: running = claimed by the dead process).
TASK_STATES_SQL = """
SELECT t.status, count(*)
FROM state.tasks t
JOIN state.chain_sync_scheduled_ranges r ON r.task_id = t.task_id
JOIN state.chain_sync_jobs j ON j.job_id = r.job_id
WHERE j.name = %s GROUP BY t.status
"""
NOW_SQL = "SELECT extract(epoch FROM clock_timestamp())::float8"
# The tasks of one job's ranges (to pick its attempts out of the profile files).
JOB_TASKS_SQL = """
SELECT r.task_id::text FROM state.chain_sync_scheduled_ranges r
JOIN state.chain_sync_jobs j USING (job_id) WHERE j.name = %s AND r.task_id IS NOT NULL
"""
# Commit times of one job's ranges, in order (for throughput over the backfill's tenths).
COMMITS_SQL = """
SELECT extract(epoch FROM r.completed_at)::float8
FROM state.chain_sync_scheduled_ranges r JOIN state.chain_sync_jobs j USING (job_id)
WHERE j.name = %s AND r.status = 'completed' ORDER BY 1
"""
# When each stream of one job committed its last range (does the tail run one stream alone?).
STREAM_ENDS_SQL = """
SELECT r.dataset_key, extract(epoch FROM max(r.completed_at))::float8
FROM state.chain_sync_scheduled_ranges r JOIN state.chain_sync_jobs j USING (job_id)
WHERE j.name = %s AND r.status = 'completed' GROUP BY 1 ORDER BY 2
"""


@dataclass(frozen=True)
class Plan:
    blocks: int
    chunk: int
    inflight: int
    chain_id: int

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return [(a, min(a + self.chunk, self.blocks)) for a in range(0, self.blocks, self.chunk)]

    @property
    def total_ranges(self) -> int:
        return len(DATASETS) * math.ceil(self.blocks / self.chunk)

    def job_file(self, directory: Path, name: str, pool: str, suffix: str = "") -> Path:
        streams = "".join(
            STREAM_YAML.format(
                key=f"{d}{suffix}", dataset=d, pool=pool, chunk=self.chunk, inflight=self.inflight
            )
            for d in DATASETS
        )
        path = directory / f"{name}.yaml"
        path.write_text(
            JOB_YAML.format(name=name, chain_id=self.chain_id, blocks=self.blocks, streams=streams)
        )
        return path


# --- helpers -------------------------------------------------------------------------------


def pool_env(pool: str) -> str:
    return f"TRACE_RPC_POOL_{pool.upper()}_URL"


def base_env() -> dict[str, str]:
    """This environment without Trace's and Dagster's homes and databases (knobs stay)."""
    drop = {"TRACE_HOME", "TRACE_STATE_URL", "TRACE_DATA_URL", "TRACE_DATABASE_URL"}
    return {
        k: v
        for k, v in os.environ.items()
        if k not in drop and not k.startswith(("DAGSTER_", "TRACE_RPC_POOL_"))
    }


def scenario_env(root: Path, name: str, dbs: Databases) -> dict[str, str]:
    home = root / name
    home.mkdir(parents=True)
    return {
        **base_env(),
        "TRACE_HOME": str(home),
        "TRACE_STATE_URL": dbs.state_url,
        "TRACE_DATA_URL": dbs.data_url,
        "DAGSTER_HOME": str(home / "dagster"),
        "TRACE_CRYO_MODE": "real",
        profile.ENV: str(home / "profile"),
    }


@contextlib.contextmanager
def environ(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def db_now(dbs: Databases) -> float:
    with psycopg.connect(dbs.state_url) as conn:
        row = conn.execute(NOW_SQL).fetchone()
    assert row is not None
    return float(row[0])


def progress(dbs: Databases, job: str) -> tuple[int, int, float | None]:
    with psycopg.connect(dbs.state_url) as conn:
        row = conn.execute(PROGRESS_SQL, (job,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), row[2]


def apply(dbs: Databases, settings: Settings, path: Path) -> float:
    """Apply a job file; returns the database time of the commit."""
    with psycopg.connect(dbs.state_url) as conn:
        with conn.transaction():
            apply_job_file(conn, settings.org_id, path)
        row = conn.execute(NOW_SQL).fetchone()
    assert row is not None
    return float(row[0])


def wait_committed(
    dbs: Databases,
    job: str,
    total: int,
    timeout: float,
    until: Callable[[int], bool] | None = None,
) -> tuple[int, float | None]:
    """Poll state until ``total`` ranges of ``job`` are committed (or ``until(committed)``);
    returns (committed, newest commit epoch). Exits on a dead range or the timeout."""
    reached = until or (lambda done: done >= total)
    deadline = time.monotonic() + timeout
    while True:
        done, dead, last = progress(dbs, job)
        if dead:
            raise SystemExit(f"{job}: {dead} range(s) ended dead; see trace-lite status")
        if reached(done):
            return done, last
        if time.monotonic() > deadline:
            raise SystemExit(f"{job}: {done}/{total} ranges committed after {timeout:g}s")
        time.sleep(0.2)


def attempts_breakdown(dbs: Databases, job: str, t0: float, row: Row) -> None:
    with psycopg.connect(dbs.state_url) as conn:
        first, attempts, ok, busy = conn.execute(ATTEMPTS_SQL, (job,)).fetchone() or (None,) * 4
        intervals = conn.execute(INTERVALS_SQL, (job,)).fetchall()
    row.first_claim = None if first is None else first - t0
    row.attempts = int(attempts or 0)
    row.task_seconds = busy / ok if ok else None
    covered, end = 0.0, t0
    for a, z in intervals:  # the union of attempt intervals, sorted by start
        if z > end:
            covered += z - max(a, end)
            end = z
    row.extra["idle"] = row.seconds - covered
    row.extra["parallel"] = sum(z - a for a, z in intervals) / covered if covered else math.nan


def profile_breakdown(
    dbs: Databases,
    job: str,
    directory: Path,
    row: Row,
    since: float | None = None,
    until: float | None = None,
) -> None:
    """Mean seconds per succeeded attempt of each phase (``TRACE_PROFILE_DIR`` files), the
    overhead around cryo per range, worker-run steps outside attempts, and the throughput of
    the first and last tenth of the job's commits."""
    with psycopg.connect(dbs.state_url) as conn:
        tasks = {r[0] for r in conn.execute(JOB_TASKS_SQL, (job,)).fetchall()}
        commits = [float(r[0]) for r in conn.execute(COMMITS_SQL, (job,)).fetchall()]
        first_claim = (conn.execute(ATTEMPTS_SQL, (job,)).fetchone() or (None,))[0]
        stream_ends = conn.execute(STREAM_ENDS_SQL, (job,)).fetchall()
        intervals = conn.execute(INTERVALS_SQL, (job,)).fetchall()
    records = profile.read(directory) if directory.exists() else []
    attempts = [
        r for r in records if r["kind"] == "attempt" and r["task_id"] in tasks and r["attempt"] >= 0
    ]
    if attempts:
        phases: dict[str, float] = {}
        for r in attempts:
            for k, v in r["phases"].items():
                phases[k] = phases.get(k, 0.0) + v
        n = len(attempts)
        mean = {k: v / n for k, v in phases.items()}
        total = sum(r.get("total", 0.0) for r in attempts) / n
        mean["attempt"] = total + mean.get("claim", 0.0)
        mean["around cryo"] = mean["attempt"] - mean.get("cryo", 0.0)
        row.extra["profile"] = mean
        # the same around cryo as this thread's CPU and its wait for a core (profile.py)
        split = {}
        for kind in ("cpu", "runq"):
            part = {k: sum(r.get(kind, {}).get(k, 0.0) for r in attempts) / n for k in phases}
            whole = sum(r.get(f"total_{kind}", 0.0) for r in attempts) / n
            split[kind] = whole + part.get("claim", 0.0) - part.get("cryo", 0.0)
        row.extra["around cryo split"] = split
        row.extra["profiled"] = n
    lo = since if since is not None else -math.inf
    hi = until if until is not None else math.inf
    steps: dict[str, float] = {}
    for r in records:
        if r["kind"] == "run" and lo <= r["at"] <= hi + 1:
            steps[r["phase"]] = steps.get(r["phase"], 0.0) + r["seconds"]
    if steps and commits:
        row.extra["run steps"] = {k: v / len(commits) for k, v in steps.items()}
    k = len(commits) // 10
    if k >= 2 and first_claim is not None:
        first = k / (commits[k - 1] - first_claim)
        last = k / (commits[-1] - commits[-k - 1])
        row.extra["tenths"] = (first, last)
        # attempts in flight (mean) over the first and the last tenth's windows
        windows = ((first_claim, commits[k - 1]), (commits[-k - 1], commits[-1]))
        row.extra["tenths_inflight"] = tuple(
            sum(max(0.0, min(z, b) - max(a0, a)) for a0, z in intervals) / (b - a)
            for a, b in windows
        )
        row.extra["stream_ends"] = [(key, end - first_claim) for key, end in stream_ends]


def check_exact(dbs: Databases, settings: Settings, chain: DevChain, suffix: str = "") -> None:
    """Rows committed per stream = the chain's (blocks, transactions, logs in range)."""
    summary, n = chain.seed_summary, chain.seed_summary.blocks
    expected = {
        "blocks": n,
        "transactions": summary.transactions(0, n),
        "logs": summary.logs(0, n),
    }
    with psycopg.connect(dbs.state_url) as conn:
        for dataset, want in expected.items():
            got = sum(
                v.row_count
                for v in versions_for_stream(
                    conn, settings.org_id, chain.chain_id, dataset + suffix
                )
            )
            if got != want:
                raise SystemExit(f"{dataset}{suffix}: {got} rows committed, the chain has {want}")


def run_stats(dagster_home: Path, job: str, since: float) -> dict[str, Any]:
    """Dagster's view of a job's runs: how many, when the first was created (epoch), mean
    seconds from creation to start (queue + launch + process start) and from start to end;
    and the other runs created since ``since`` (service runs), by ``trace/kind`` or job name."""
    from dagster import DagsterInstance, RunsFilter

    with environ({**os.environ, "DAGSTER_HOME": str(dagster_home)}), DagsterInstance.get() as inst:
        records = inst.get_run_records(RunsFilter(tags={"trace/job": job}))
        others = [
            r
            for r in inst.get_run_records()
            if r.create_timestamp.timestamp() >= since
            and r.dagster_run.tags.get("trace/job") != job
        ]
    launch = [
        r.start_time - r.create_timestamp.timestamp() for r in records if r.start_time is not None
    ]
    span = [r.end_time - r.start_time for r in records if r.start_time and r.end_time]
    other_kinds: dict[str, int] = {}
    for r in others:
        tags = r.dagster_run.tags
        kind = tags.get("trace/service") or tags.get("trace/kind") or r.dagster_run.job_name
        other_kinds[kind] = other_kinds.get(kind, 0) + 1
    return {
        "runs": len(records),
        "first_created": min((r.create_timestamp.timestamp() for r in records), default=math.nan),
        "launch": statistics.mean(launch) if launch else math.nan,
        "run": statistics.mean(span) if span else math.nan,
        "other_runs": other_kinds,
    }


def proxy_requests(proxy: ProxyProcess, before: dict[str, Any]) -> int:
    return int(proxy.stats()["http_requests"]) - int(before["http_requests"])


# --- bare cryo -----------------------------------------------------------------------------


def cryo_seconds(url: str, scratch: Path, datasets: list[list[str]], blocks: list[str]) -> float:
    t0 = time.perf_counter()
    for ds in datasets:
        for b in blocks:
            out = Path(tempfile.mkdtemp(dir=scratch))
            # cryo takes a list of datasets too (trace_core's wrapper is typed for one)
            summary = freeze(ds, blocks=[b], rpc=url, output_dir=str(out), verbose=False)  # type: ignore[arg-type]
            if (summary or {}).get("n_errored"):
                raise SystemExit(f"bare cryo {ds} {b}: {summary}")
            shutil.rmtree(out)
    return time.perf_counter() - t0


def bench_cryo(
    plan: Plan, url: str, condition: str, scratch: Path, reps: int, proxy: ProxyProcess | None
) -> list[Row]:
    whole = [f"0:{plan.blocks}"]
    per_range = [f"{a}:{z}" for a, z in plan.ranges]
    variants = {
        "bare cryo (baseline)": ([[d] for d in DATASETS], whole),
        "cryo, 3 datasets, 1 call": ([list(DATASETS)], whole),
        "cryo, 1 call per range": ([[d] for d in DATASETS], per_range),
    }
    if not REFERENCE_ROWS:
        variants = {k: v for k, v in variants.items() if k == "bare cryo (baseline)"}
    rows = []
    for name, (datasets, blocks) in variants.items():
        before = proxy.stats() if proxy else None
        times = [cryo_seconds(url, scratch, datasets, blocks) for _ in range(reps)]
        row = Row(name, condition, statistics.median(times), note=f"median of {reps}")
        row.extra["calls"] = len(datasets) * len(blocks)
        if proxy and before:
            row.requests = proxy_requests(proxy, before) // reps
        rows.append(row)
    return rows


# --- Trace paths ---------------------------------------------------------------------------


def bench_in_process(
    plan: Plan, root: Path, chain: DevChain, url: str, condition: str, proxy: ProxyProcess | None
) -> Row:
    """``trace-lite run --until-idle``'s driver in this process, on fresh databases."""
    from dagster import DagsterInstance

    from trace_core.runtime import Runtime
    from trace_dagster.definitions import build_definitions
    from trace_dagster.driver import drive_until_idle
    from trace_lite.cli import ensure_dagster_home

    name = f"inproc_{condition}"
    dbs = scratch_databases(root, "bench_e2e")
    env = scenario_env(root, name, dbs) | {pool_env("bench"): url}
    with environ(env):
        ensure_dagster_home()
        settings = load_settings()
        job_file = plan.job_file(root / name, name, "bench")
        before = proxy.stats() if proxy else None
        t0 = apply(dbs, settings, job_file)
        started = time.perf_counter()
        rt = Runtime(settings)
        try:
            with DagsterInstance.get() as instance:
                report = drive_until_idle(rt, build_definitions(rt), instance, timeout=1800)
        finally:
            rt.close()
        wall = time.perf_counter() - started
        if not report.idle or report.failed_runs or report.dead_tasks:
            raise SystemExit(f"{name}: not idle or failed ({report})")
        done, _, last = progress(dbs, name)
        if done != plan.total_ranges or last is None:
            raise SystemExit(f"{name}: {done}/{plan.total_ranges} ranges committed")
        check_exact(dbs, settings, chain)
        row = Row("run --until-idle", condition, last - t0, runs=report.runs)
        row.note = f"driver idle after {wall:.1f}s"
        attempts_breakdown(dbs, name, t0, row)
        profile_breakdown(dbs, name, Path(env[profile.ENV]), row)
        if proxy and before:
            row.requests = proxy_requests(proxy, before)
        row.extra.update(run_stats(Path(env["DAGSTER_HOME"]), name, t0))
        row.extra["to_first_run"] = row.extra["first_created"] - t0
    return row


def _cli(args: list[str], env: dict[str, str], log: Path, timeout: float) -> None:
    with log.open("ab") as out:
        proc = subprocess.run(
            [TRACE_LITE, *args], env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
        )
    if proc.returncode != 0:
        raise SystemExit(f"trace-lite {' '.join(args)} exited {proc.returncode}; see {log}")


def bench_daemon(
    plan: Plan, root: Path, chain: DevChain, urls: dict[str, str], proxy: ProxyProcess
) -> tuple[list[Row], dict[str, float]]:
    """``trace-lite up``; the warm-up job, then one job per condition; ``trace-lite down``."""
    name = "daemon"
    dbs = scratch_databases(root, "bench_e2e")
    env = scenario_env(root, name, dbs)
    env |= {pool_env(c): url for c, url in urls.items()}
    env |= {"TRACE_QUERY_PORT": str(free_port("127.0.0.1"))}
    log = root / name / "cli.log"
    with environ(env):
        settings = load_settings()
    rows: list[Row] = []
    timings: dict[str, float] = {}
    t_up = time.perf_counter()
    try:
        _cli(["up", "--port", str(free_port("127.0.0.1"))], env, log, timeout=600)
        timings["up"] = time.perf_counter() - t_up
        warm = Plan(plan.chunk, plan.chunk, 1, plan.chain_id)
        warm_file = warm.job_file(root / name, "warmup", "direct", "_warmup")
        t0 = apply(dbs, settings, warm_file)
        _, last = wait_committed(dbs, "warmup", warm.total_ranges, timeout=600)
        timings["warm-up job"] = (last or t0) - t0
        for condition in CONDITIONS:
            job = f"daemon_{condition}"
            suffix = f"_{condition}"
            job_file = plan.job_file(root / name, job, condition, suffix)
            before = proxy.stats()
            t0 = apply(dbs, settings, job_file)
            _, last = wait_committed(dbs, job, plan.total_ranges, timeout=1800)
            assert last is not None
            check_exact(dbs, settings, chain, suffix)
            row = Row("up (launched runs)", condition, last - t0)
            attempts_breakdown(dbs, job, t0, row)
            profile_breakdown(dbs, job, Path(env[profile.ENV]), row, since=t0, until=last)
            if condition == "proxied":
                row.requests = proxy_requests(proxy, before)
            row.extra.update(run_stats(Path(env["DAGSTER_HOME"]), job, t0))
            row.extra["to_first_run"] = row.extra["first_created"] - t0
            row.runs = int(row.extra["runs"])
            rows.append(row)
    finally:
        t_down = time.perf_counter()
        _cli(["down"], env, log, timeout=300)
        timings["down"] = time.perf_counter() - t_down
    return rows, timings


def bench_recovery(
    plan: Plan, root: Path, chain: DevChain, url: str, kill_after: int, knobs: dict[str, str]
) -> dict[str, Any]:
    """SIGKILL ``trace-lite run --until-idle`` after ``kill_after`` commits; time the restart."""
    name = "recovery"
    dbs = scratch_databases(root, "bench_e2e")
    env = scenario_env(root, name, dbs) | {pool_env("bench"): url} | knobs
    log = root / name / "run.log"
    with environ(env):
        settings = load_settings()
    apply(dbs, settings, plan.job_file(root / name, name, "bench"))
    out = log.open("ab")
    first = subprocess.Popen(
        [TRACE_LITE, "run", "--until-idle"], env=env, stdout=out, stderr=subprocess.STDOUT
    )
    try:
        killed_at, _ = wait_committed(
            dbs, name, plan.total_ranges, timeout=600, until=lambda done: done >= kill_after
        )
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_at, _, _ = progress(dbs, name)
        with psycopg.connect(dbs.state_url) as conn:
            at_kill: dict[str, int] = dict(conn.execute(TASK_STATES_SQL, (name,)).fetchall())
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    if killed_at >= plan.total_ranges:
        raise SystemExit("recovery: every range committed before the kill; use more blocks")
    restart = db_now(dbs)
    second = subprocess.Popen(
        [TRACE_LITE, "run", "--until-idle"], env=env, stdout=out, stderr=subprocess.STDOUT
    )
    try:
        _, last = wait_committed(dbs, name, plan.total_ranges, timeout=1800)
        assert last is not None
        code = second.wait(timeout=600)
        exited = db_now(dbs)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
        out.close()
    if code != 0:
        raise SystemExit(f"recovery: the restarted run exited {code}; see {log}")
    check_exact(dbs, settings, chain)
    return {
        "committed_at_kill": killed_at,
        "tasks_at_kill": at_kill,
        "seconds": last - restart,
        "exit_seconds": exited - restart,
        "lease": settings.lease_seconds,
        "rewake": settings.rewake_after_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    global CONDITIONS, REFERENCE_ROWS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, short recovery knobs")
    parser.add_argument("--blocks", type=int, help="chain length = job range (default 4000)")
    parser.add_argument("--chunk-size", type=int, default=500, help="blocks per Trace range")
    parser.add_argument(
        "--ranges",
        type=int,
        help="total ranges of the job (3 streams): sets --blocks to ranges / 3 x chunk size",
    )
    parser.add_argument("--max-inflight", type=int, default=4, help="ranges in flight per stream")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="added by the proxy")
    parser.add_argument("--reps", type=int, help="bare cryo repetitions, median (3; quick: 1)")
    parser.add_argument(
        "--paths",
        default="inprocess,daemon,recovery",
        help="which Trace paths to run (inprocess, daemon, recovery)",
    )
    parser.add_argument(
        "--kill-after", type=int, help="recovery: SIGKILL after this many committed ranges"
    )
    parser.add_argument(
        "--lease-seconds", type=int, help="recovery: TRACE_LEASE_SECONDS (quick: 10)"
    )
    parser.add_argument(
        "--rewake-seconds", type=int, help="recovery: TRACE_REWAKE_AFTER_SECONDS (quick: 20)"
    )
    parser.add_argument(
        "--conditions",
        default=",".join(CONDITIONS),
        help="which conditions to run (direct, proxied); the targets are read behind the proxy",
    )
    parser.add_argument(
        "--baseline-only",
        action="store_true",
        help="bare cryo: only the baseline row (skip the two reference rows)",
    )
    parser.add_argument("--keep", action="store_true", help="keep homes and logs (printed)")
    args = parser.parse_args(argv)
    CONDITIONS = tuple(c for c in CONDITIONS if c in args.conditions.split(","))
    REFERENCE_ROWS = not args.baseline_only
    blocks = args.blocks or (2000 if args.quick else 4000)
    if args.ranges:
        blocks = math.ceil(args.ranges / len(DATASETS)) * args.chunk_size
    reps = args.reps or (1 if args.quick else 3)
    paths = {p.strip() for p in args.paths.split(",") if p.strip()}
    knobs = {}
    lease = args.lease_seconds or (10 if args.quick else None)
    rewake = args.rewake_seconds or (20 if args.quick else None)
    if lease:
        knobs["TRACE_LEASE_SECONDS"] = str(lease)
    if rewake:
        knobs["TRACE_REWAKE_AFTER_SECONDS"] = str(rewake)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from dagster import BetaWarning

    warnings.filterwarnings("ignore", category=BetaWarning)

    root = Path(tempfile.mkdtemp(prefix="trace-bench-e2e-"))
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    chain = DevChain.start(blocks=blocks, seed=SEED)
    built = time.perf_counter() - t0
    proxy = spawn_proxy(chain.rpc_url, latency_seconds=args.latency_ms / 1000.0)
    urls = {"direct": chain.rpc_url, "proxied": proxy.url}
    plan = Plan(blocks, args.chunk_size, args.max_inflight, chain.chain_id)
    settings = load_settings()
    summary = chain.seed_summary
    print(
        f"anvil chain: {blocks} blocks, {summary.transactions(0, blocks)} txs, "
        f"{summary.logs(0, blocks)} logs (built in {built:.1f}s); job: 3 streams x "
        f"{len(plan.ranges)} ranges of {plan.chunk} blocks, max_inflight {plan.inflight}, "
        f"worker batch {settings.worker_batch_size}; proxy +{args.latency_ms:g} ms per request",
        flush=True,
    )
    rows: list[Row] = []
    timings: dict[str, float] = {}
    recovery: dict[str, Any] | None = None
    try:
        scratch = root / "cryo"
        scratch.mkdir()
        for condition in CONDITIONS:
            px = proxy if condition == "proxied" else None
            rows += bench_cryo(plan, urls[condition], condition, scratch, reps, px)
        print("bare cryo done", flush=True)
        if "inprocess" in paths:
            for condition in CONDITIONS:
                px = proxy if condition == "proxied" else None
                rows.append(bench_in_process(plan, root, chain, urls[condition], condition, px))
            print("in-process done", flush=True)
        if "daemon" in paths:
            daemon_rows, timings = bench_daemon(plan, root, chain, urls, proxy)
            rows += daemon_rows
            print("daemon done", flush=True)
        if "recovery" in paths:
            kill_after = args.kill_after or max(1, plan.total_ranges // 4)
            recovery = bench_recovery(plan, root, chain, proxy.url, kill_after, knobs)
    except BaseException:
        print(f"failed; logs and homes kept under {root}", flush=True)
        raise
    else:
        if args.keep:
            print(f"homes and logs kept under {root}", flush=True)
        else:
            atexit.register(shutil.rmtree, root, ignore_errors=True)
    finally:
        proxy.stop()
        chain.stop()
        report(rows, timings, recovery, plan, args.latency_ms, load_before)
    return 0 if targets_met(rows, recovery) else 1


if __name__ == "__main__":
    sys.exit(main())
