"""No-op tasks through the whole Dagster path, by ``TRACE_WORKER_BATCH_SIZE``.

Each scenario creates N ``noop`` tasks the way the planner does (``create_task`` writes the task
and its outbox wake-up in one transaction), then times, from that commit until every task has
succeeded: dispatcher sensor (outbox -> queue) -> worker sensor (wake-ups -> run requests, batch
tasks per run) -> a ``trace_worker`` run -> ``execute_tasks`` op (claim, no-op, fenced
completion). Two ways of executing runs:

- ``in-process``: ``trace_dagster.driver.drive_until_idle`` (what ``trace-lite run --until-idle``
  does): runs execute one after another inside this process via ``execute_in_process``;
- ``launched``: what the daemon does under ``dagster dev``: workspace.yaml is served by a gRPC
  code server, each run request becomes a run submitted to the instance
  (``DefaultRunCoordinator`` + ``DefaultRunLauncher``), which starts a fresh run worker process;
  at most 2 runs at a time (Lite's ``max_concurrent_runs``). Sensors are still ticked here.

The baseline for the ratio is batch 1 of the same executor in the same run. ``first s`` is the
time until the first task succeeded (the latency a batch adds before anything is done).

Embedded Postgres and a sqlite Dagster instance under a temporary directory; nothing else is
touched. Run: .venv/bin/python benchmarks/bench_dagster.py [--tasks N] [--launch-tasks N]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from _noop_operator import register as register_noop
from _scratch import scratch_databases
from dagster import (
    BetaWarning,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    RunRequest,
    SensorResult,
    build_sensor_context,
)

from trace_core.db.connection import Databases
from trace_core.engine.idle import outstanding_work
from trace_core.runtime import Runtime
from trace_core.settings import REPO_ROOT, load_settings
from trace_core.tasks import create_task
from trace_dagster.definitions import build_definitions
from trace_dagster.driver import drive_until_idle
from trace_dagster.jobs import WORKER_JOB

DISPATCHER = "trace_dispatcher"
WORKER_SENSOR = "trace_worker_wakeups"
MAX_CONCURRENT_RUNS = 2  # dagster_home/dagster.yaml (Lite)
RUN_TIMEOUT_SECONDS = 300.0
DAGSTER_YAML = """run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
"""
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


@dataclass(frozen=True)
class Result:
    executor: str
    tasks: int
    batch: int
    runs: int
    seconds: float
    first_seconds: float

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


def _create_tasks(rt: Runtime, n: int) -> float:
    """Create ``n`` noop tasks (+ outbox rows) in one transaction; returns the database time
    of the commit as epoch seconds."""
    with rt.state() as conn:
        with conn.transaction():
            for _ in range(n):
                create_task(conn, task_id=uuid.uuid4(), operator="noop", payload={})
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    assert row is not None
    return float(row[0])


def _first_finished(rt: Runtime, since: float) -> float:
    with rt.state() as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM min(finished_at))::float8 FROM state.tasks "
            "WHERE status = 'succeeded' AND finished_at >= to_timestamp(%s)",
            (since,),
        ).fetchone()
    assert row is not None and row[0] is not None
    return float(row[0]) - since


def _unfinished(rt: Runtime) -> int:
    with rt.state() as conn:
        row = conn.execute(
            "SELECT count(*) FROM state.tasks WHERE status <> 'succeeded'"
        ).fetchone()
    assert row is not None
    return int(row[0])


@contextmanager
def _batch_env(batch: int) -> Iterator[Runtime]:
    """Sensors read settings from the environment (TraceResource), as under the daemon."""
    os.environ["TRACE_WORKER_BATCH_SIZE"] = str(batch)
    rt = Runtime(load_settings())
    try:
        yield rt
    finally:
        rt.close()


def bench_in_process(instance: DagsterInstance, n: int, batch: int) -> Result:
    with _batch_env(batch) as rt:
        defs = build_definitions(rt)
        t0 = _create_tasks(rt, n)
        started = time.perf_counter()
        report = drive_until_idle(
            rt, defs, instance, timeout=RUN_TIMEOUT_SECONDS, poll_seconds=0.05
        )
        seconds = time.perf_counter() - started
        if not report.idle or report.failed_runs or _unfinished(rt):
            raise SystemExit(f"in-process batch {batch}: not all tasks succeeded ({report})")
        return Result("in-process", n, batch, report.runs, seconds, _first_finished(rt, t0))


def _tick(
    defs: Definitions, instance: DagsterInstance, cursors: dict[str, str | None]
) -> list[RunRequest]:
    """Evaluate the dispatcher then the worker sensor once; the worker's run requests."""
    requests: list[RunRequest] = []
    for name in (DISPATCHER, WORKER_SENSOR):
        with build_sensor_context(
            instance=instance,
            definitions=defs,
            sensor_name=name,
            cursor=cursors.get(name),
            resources=dict(defs.resources or {}),
        ) as ctx:
            result = defs.resolve_sensor_def(name)(ctx)
        if isinstance(result, SensorResult):
            cursors[name] = result.cursor
            requests += list(result.run_requests or [])
    return requests


def _noop_workspace() -> Path:
    """A workspace.yaml like the repo's, loading ``_noop_definitions.py`` (adds ``noop``)."""
    path = Path(tempfile.mkdtemp(prefix="bench-dagster-ws-")) / "workspace.yaml"
    path.write_text(
        "load_from:\n  - python_file:\n"
        f"      relative_path: {REPO_ROOT / 'benchmarks' / '_noop_definitions.py'}\n"
        "      attribute: defs\n"
        f"      working_directory: {REPO_ROOT / 'benchmarks'}\n"
    )
    atexit.register(shutil.rmtree, path.parent, True)
    return path


def bench_launched(instance: DagsterInstance, n: int, batch: int) -> Result:
    """Runs submitted through the instance's run launcher to a gRPC code server, as the
    daemon does. Uses Dagster's workspace internals (no public API submits a run)."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    with (
        _batch_env(batch) as rt,
        WorkspaceProcessContext(
            instance,
            WorkspaceFileTarget([str(_noop_workspace())]),
            code_server_log_level="WARNING",
        ) as workspace,
    ):
        request_ctx = workspace.create_request_context()
        (location_name,) = request_ctx.get_code_location_entries()
        location = request_ctx.get_code_location(location_name)
        (repo,) = location.get_repositories().values()
        remote_job = repo.get_full_job(WORKER_JOB)
        defs = build_definitions(rt)
        job_def = defs.resolve_job_def(WORKER_JOB)

        cursors: dict[str, str | None] = {}
        pending: list[RunRequest] = []
        active: set[str] = set()
        runs = 0
        t0 = _create_tasks(rt, n)
        started = time.perf_counter()
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        while True:
            pending += _tick(defs, instance, cursors)
            while pending and len(active) < MAX_CONCURRENT_RUNS:
                req = pending.pop(0)
                run = instance.create_run_for_job(
                    job_def=job_def,
                    run_config=req.run_config,
                    tags=dict(req.tags),
                    remote_job_origin=remote_job.get_remote_origin(),
                    job_code_origin=remote_job.get_python_origin(),
                )
                instance.submit_run(run.run_id, request_ctx)
                active.add(run.run_id)
                runs += 1
            for run_id in list(active):
                dagster_run = instance.get_run_by_id(run_id)
                assert dagster_run is not None
                if dagster_run.status in FINISHED:
                    if dagster_run.status != DagsterRunStatus.SUCCESS:
                        raise SystemExit(
                            f"launched batch {batch}: run {run_id} {dagster_run.status}"
                        )
                    active.discard(run_id)
            work = outstanding_work(rt)
            queued, outbox = work.active, work.pending
            if not active and not pending and queued == 0 and outbox == 0:
                break
            if time.monotonic() > deadline:
                states = {
                    rid: getattr(instance.get_run_by_id(rid), "status", None) for rid in active
                }
                raise SystemExit(f"launched batch {batch}: timed out; active runs {states}")
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        if _unfinished(rt):
            raise SystemExit(f"launched batch {batch}: not all tasks succeeded")
        return Result("launched", n, batch, runs, seconds, _first_finished(rt, t0))


def _setup() -> Databases:
    home = Path(tempfile.mkdtemp(prefix="trace-bench-dagster-"))
    # atexit runs last-in first-out: the server (registered next) stops before this removal
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    dbs = scratch_databases(home, "bench_dagster")
    os.environ.update(
        TRACE_HOME=str(home),
        TRACE_STATE_URL=dbs.state_url,
        TRACE_DATA_URL=dbs.data_url,
        DAGSTER_HOME=str(home / "dagster"),
    )
    (home / "dagster").mkdir()
    # Runs launch on submit; this script caps concurrency itself, as the run queue would.
    (home / "dagster" / "dagster.yaml").write_text(DAGSTER_YAML)
    return dbs


def _median(results: list[Result]) -> Result:
    ordered = sorted(results, key=lambda r: r.seconds)
    mid = ordered[len(ordered) // 2]
    return Result(
        mid.executor,
        mid.tasks,
        mid.batch,
        mid.runs,
        statistics.median(r.seconds for r in results),
        statistics.median(r.first_seconds for r in results),
    )


def main() -> None:
    register_noop()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=64, help="tasks per in-process scenario")
    parser.add_argument("--batches", default="1,4,8,32", help="worker batch sizes")
    parser.add_argument("--repeat", type=int, default=3, help="in-process repetitions (median)")
    parser.add_argument("--launch-tasks", type=int, default=16, help="tasks per launched scenario")
    parser.add_argument(
        "--launch-batches", default="1,4,8,16", help="batch sizes with launched runs"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=BetaWarning)
    batches = [int(b) for b in args.batches.split(",") if b]
    launch_batches = [int(b) for b in args.launch_batches.split(",") if b]

    _setup()
    load_before = os.getloadavg()[0]
    results: list[Result] = []
    with DagsterInstance.get() as instance:
        bench_in_process(instance, 8, 8)  # warm-up: imports, connections, sqlite schema
        for batch in batches:
            results.append(
                _median([bench_in_process(instance, args.tasks, batch) for _ in range(args.repeat)])
            )
        for batch in launch_batches:
            results.append(bench_launched(instance, args.launch_tasks, batch))

    print(
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after (2 cores, shared); "
        f"in-process: median of {args.repeat}"
    )
    print(
        f"{'executor':<12}{'tasks':>6}{'batch':>6}{'runs':>6}{'seconds':>9}{'tasks/s':>9}"
        f"{'first s':>9}  vs batch 1"
    )
    base = {r.executor: r.rate for r in results if r.batch == 1}
    for r in results:
        ratio = f"{r.rate / base[r.executor]:.2f}x" if r.executor in base else "-"
        print(
            f"{r.executor:<12}{r.tasks:>6}{r.batch:>6}{r.runs:>6}{r.seconds:>9.2f}{r.rate:>9.2f}"
            f"{r.first_seconds:>9.2f}  {ratio}"
        )


if __name__ == "__main__":
    main()
