"""What reporting a range costs a worker run, by Dagster instance storage.

A worker run reports each range it commits as Dagster events (``trace_dagster.jobs._report``):
one log line and one ``AssetObservation`` of the range's epoch partition; a continuing run also
tags itself with the task (``RunTagger``: in batches since the launched branch; ``--tags each``
times one ``add_run_tags`` per range, as before). This times exactly those calls inside a real
run (``execute_in_process`` of a one-op job) on fresh instances whose storage is:

- ``sqlite``: Lite's ``dagster_home/dagster.yaml`` (Dagster's default: a sqlite file per run,
  asset events mirrored into an index file; a new connection, a commit and its fsync per event);
- ``postgres``: ``dagster-postgres`` (``dagster_home/dagster.postgres.yaml``) on an embedded
  Postgres (a new connection, i.e. a backend fork, per event);
- ``postgres, async commit``: the same with ``synchronous_commit = off`` for that database.

Per range: wall ms, the reporting thread's CPU ms, and the Postgres backends' CPU ms (the
postmaster's reaped children). Run: .venv/bin/python benchmarks/bench_dagster_events.py
[--ranges N]
"""

# No `from __future__ import annotations` here: Dagster resolves op annotations at runtime.

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import psycopg
from dagster import (
    AssetKey,
    AssetObservation,
    DagsterInstance,
    MetadataValue,
    OpExecutionContext,
    job,
    op,
)

from trace_core.db.connection import ensure_database, with_database
from trace_core.db.embedded import embedded_server_uri

TAGS_EACH = False


def _children_cpu(pid: int) -> float:
    """CPU seconds of ``pid``'s exited, reaped children (a postmaster's backends)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


@op
def report_ranges(context: OpExecutionContext) -> None:
    n = int(os.environ["BENCH_RANGES"])
    key = AssetKey(["chain_sync", "bench", "blocks"])
    t0, c0 = time.perf_counter(), time.thread_time()
    for i in range(n):
        start, end = i * 250, (i + 1) * 250
        context.log.info(
            f"range {start}-{end} of bench/blocks: succeeded, 250 rows, 0.50 s, attempt 1, "
            f"task 00000000-0000-0000-0000-{i:012d}"
        )
        if TAGS_EACH:
            context.instance.add_run_tags(context.run_id, {f"trace/task.{i}": "1"})
        context.log_event(
            AssetObservation(
                asset_key=key,
                partition=f"{start // 10_000 * 10_000:012d}-{(start // 10_000 + 1) * 10_000:012d}",
                metadata={
                    "block_range": MetadataValue.text(f"[{start}, {end})"),
                    "task_id": f"00000000-0000-0000-0000-{i:012d}",
                    "attempt": 1,
                    "dataset_version": MetadataValue.text("v" * 32),
                    "row_count": 250,
                    "bytes": 40_000,
                    "progress": MetadataValue.text(f"{i % 40 + 1}/40 ranges"),
                },
            )
        )
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    Path(os.environ["BENCH_OUT"]).write_text(f"{wall} {cpu}")


@job
def bench_report() -> None:
    report_ranges()


def measure(home: Path, yaml: str, ranges: int, postmaster: int | None) -> tuple[float, ...]:
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(yaml)
    out = home / "out"
    os.environ |= {"BENCH_RANGES": str(ranges), "BENCH_OUT": str(out)}
    with DagsterInstance.from_config(str(home)) as instance:
        bench_report.execute_in_process(instance=instance)  # warm: tables, first connections
        before = _children_cpu(postmaster) if postmaster else 0.0
        assert bench_report.execute_in_process(instance=instance).success
        backends = (_children_cpu(postmaster) - before) if postmaster else 0.0
    wall, cpu = (float(x) for x in out.read_text().split())
    return wall / ranges * 1000, cpu / ranges * 1000, backends / ranges * 1000


def main() -> None:
    global TAGS_EACH
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranges", type=int, default=300)
    parser.add_argument("--tags", choices=("batched", "each"), default="batched")
    args = parser.parse_args()
    TAGS_EACH = args.tags == "each"
    warnings.filterwarnings("ignore")
    root = Path(tempfile.mkdtemp(prefix="trace-bench-events-"))
    server = embedded_server_uri(root / "pgserver", persistent=False)
    with psycopg.connect(server, autocommit=True) as conn:
        postmaster = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
        postmaster = int(Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()[1])
    lite = (Path(__file__).parent.parent / "dagster_home" / "dagster.yaml").read_text()
    rows = [("sqlite (Lite's dagster.yaml)", measure(root / "sqlite", lite, args.ranges, None))]
    for name, sync in (("postgres", "on"), ("postgres, async commit", "off")):
        db = f"dagster_{sync}"
        ensure_database(server, db)
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {db} SET synchronous_commit = {sync}")
        url = with_database(server, db).replace("postgresql://", "postgresql+psycopg2://", 1)
        yaml = f"storage:\n  postgres:\n    postgres_url: '{url}'\ntelemetry:\n  enabled: false\n"
        rows.append((name, measure(root / db, yaml, args.ranges, postmaster)))
    print(
        f"{args.ranges} ranges reported (a log line + an observation"
        f"{', add_run_tags' if TAGS_EACH else ''} each); load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'storage':<30}{'wall ms':>9}{'thread CPU ms':>15}{'backends CPU ms':>17}")
    for name, (wall, cpu, backends) in rows:
        print(f"{name:<30}{wall:>9.2f}{cpu:>15.2f}{backends:>17.2f}")


if __name__ == "__main__":
    main()
