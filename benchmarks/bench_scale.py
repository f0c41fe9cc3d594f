"""A simulated year of Monad: Dagster partitions as fine ranges (the baseline) vs epochs.

Load (say it when quoting numbers): one chain_sync stream of ``--blocks`` blocks (default a
year of Monad: 104M blocks at 300 ms) in ranges of ``--chunk`` blocks (1,000: 104,000 ranges).
Extraction is explicitly fake (``TRACE_CRYO_MODE=fake``) and, for all but the last
``--tail`` ranges, skipped: those ranges are **planned and committed as state rows in bulk**
(one SQL statement writes every range row and a dataset-version row per range; no Parquet is
written for them). The last ``--tail`` ranges then go through the real path on the epoch
instance (dispatcher sensor -> worker run -> fake cryo -> commit -> epoch observation, and the
epoch's materialization), so per-range reporting is measured with a year of rows present.

Two Dagster instances get the same history (their storage in Postgres on the scratch server,
as compose and AWS run it; ``--storage sqlite`` for Lite's, whose writes are ~60 ms per event
on a loaded box, so only for small loads):
- ``fine``: one dynamic partition per range, each materialized (the partitioning before
  epochs; events written in one batch);
- ``epochs``: ``trace_dagster.epochs.partition_sync`` (what the dispatcher sensor runs) adds
  one partition per epoch (``--epoch`` blocks, default 100,000) and materializes complete ones.

Then the UI's partitions page query (``PartitionHealthQuery``, copied from the webserver's
bundle) is timed through Dagster's GraphQL against each instance with the real definitions
(``dagster_graphql``'s out-of-process workspace: a code server loads
``trace_dagster.definitions``), ``--repeat`` times each; the ratio is fine / epochs.

Reusable pieces (issue 25 shares this file): ``Scale``, ``setup_env``, ``apply_stream``,
``bulk_commit``, ``drive_tail``, ``fine_instance``, ``epoch_instance``, ``partitions_page``.

Run: .venv/bin/python benchmarks/bench_scale.py [--blocks N] [--chunk N] [--epoch N]
     [--tail N] [--repeat N] [--storage postgres|sqlite] [--migrate]
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from _scratch import scratch_databases
from dagster import AssetKey, AssetMaterialization, DagsterInstance, instance_for_test
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.events.log import EventLogEntry
from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

from trace_core.chain_sync import store
from trace_core.chain_sync.planner import range_partition_key
from trace_core.db.connection import ensure_database, with_database
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_dagster.driver import drive_until_idle
from trace_dagster.epochs import MAX_BACKFILLED_PER_SYNC, partition_sync
from trace_dagster.partitions import partitions_def_name, stream_asset_key
from trace_lite.stack import free_port

JOB, STREAM, CHAIN_ID = "monad_year", "blocks", 143
DEFS_FILE = Path(__file__).with_name("_scale_defs.py")
# The partitions page's query, as the webserver's bundle sends it (Default statuses only:
# these assets have one dynamic dimension).
PARTITION_HEALTH_QUERY = """
query PartitionHealthQuery($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      id
      partitionKeysByDimension { name type partitionKeys }
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses {
          materializedPartitions materializingPartitions failedPartitions
        }
      }
    }
  }
}
"""
EVENT_BATCH = 5_000
_servers: list[str] = []  # the scratch Postgres server (Dagster's storage goes there too)


@dataclass(frozen=True)
class Scale:
    blocks: int
    chunk: int
    epoch: int
    tail: int

    @property
    def ranges(self) -> int:
        return -(-self.blocks // self.chunk)

    @property
    def bulk_end(self) -> int:
        """Where the bulk-committed history ends and the real tail starts."""
        return max(0, self.blocks - self.tail * self.chunk)


def setup_env(prefix: str = "trace-bench-scale-") -> Runtime:
    """Scratch databases and a Trace home; extraction explicitly fake."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    dbs = scratch_databases(home, "bench_scale")
    _servers.append(with_database(dbs.state_url, "postgres"))
    os.environ.update(
        TRACE_HOME=str(home),
        TRACE_STATE_URL=dbs.state_url,
        TRACE_DATA_URL=dbs.data_url,
        TRACE_CRYO_MODE="fake",  # explicit: no RPC, deterministic fake Parquet
        TRACE_WORKER_BATCH_SIZE="8",
    )
    return Runtime(load_settings(), dbs)


def apply_stream(rt: Runtime, scale: Scale, apply: bool = True) -> Path:
    """A fixed_target job over the simulated year: one ``blocks`` stream."""
    path = rt.settings.home / "monad_year.yaml"
    path.write_text(
        f"""kind: chain_sync
name: {JOB}
chain_id: {CHAIN_ID}
mode: {{kind: fixed_target, from_block: 0, to_block: {scale.blocks}}}
epoch_blocks: {scale.epoch}
streams:
  {STREAM}: {{cryo_dataset_name: blocks, rpc_pool: standard, chunk_size: {scale.chunk}, max_inflight: 8}}
"""
    )
    if apply:
        with rt.state() as conn:
            store.apply_job_file(conn, rt.settings.org_id, path)
    return path


BULK_SQL = """
WITH s AS (
    SELECT s.job_id, s.dataset_key, s.dataset_uuid, s.config_hash
    FROM state.chain_sync_streams s JOIN state.chain_sync_jobs j USING (job_id)
    WHERE j.name = %(job)s AND s.dataset_key = %(stream)s
), r AS (
    SELECT g * %(chunk)s AS a, LEAST((g + 1) * %(chunk)s, %(end)s) AS b, gen_random_uuid() AS v
    FROM generate_series(0, (%(end)s - 1) / %(chunk)s) AS g
), versions AS (
    INSERT INTO state.dataset_versions (
        dataset_version, dataset_uuid, chain_id, range_start, range_end, config_hash,
        schema_hash, storage_prefix, manifest_key, row_count, bytes, file_count)
    SELECT r.v, s.dataset_uuid, %(chain)s, r.a, r.b, s.config_hash, 'bench_scale',
           'bench/' || r.a || '/', 'bench/' || r.a || '/manifest.json', r.b - r.a, 0, 0
    FROM r, s
)
INSERT INTO state.chain_sync_scheduled_ranges (
    job_id, dataset_key, range_start, range_end, task_id, status, dataset_version, completed_at)
SELECT s.job_id, s.dataset_key, r.a, r.b, gen_random_uuid(), 'completed', r.v, now()
FROM r, s
"""


def bulk_commit(rt: Runtime, scale: Scale) -> float:
    """Plan and commit ``[0, bulk_end)`` as state rows in one statement (no extraction, no
    files, no tasks); the cursor moves past them. Returns seconds."""
    if scale.bulk_end == 0:
        return 0.0
    started = time.perf_counter()
    params = {
        "job": JOB,
        "stream": STREAM,
        "chunk": scale.chunk,
        "end": scale.bulk_end,
        "chain": CHAIN_ID,
    }
    with rt.state() as conn, conn.transaction():
        conn.execute(BULK_SQL, params)
        conn.execute(
            "UPDATE state.chain_sync_cursor c SET next_block = %(end)s FROM state.chain_sync_jobs j "
            "WHERE j.job_id = c.job_id AND j.name = %(job)s AND c.dataset_key = %(stream)s",
            params,
        )
    return time.perf_counter() - started


def committed_ranges(rt: Runtime) -> list[tuple[int, int]]:
    with rt.state() as conn:
        job_id = store.resolve_job(conn, rt.settings.org_id, JOB)
        return [
            (r.range_start, r.range_end)
            for r in store.list_ranges(conn, job_id, STREAM, status="completed")
        ]


def drive_tail(rt: Runtime, instance: DagsterInstance) -> tuple[float, int]:
    """Plan and run the rest through the real path (fake extraction). Returns (s, runs)."""
    from trace_dagster.definitions import build_definitions

    started = time.perf_counter()
    report = drive_until_idle(rt, build_definitions(rt), instance, timeout=1800, poll_seconds=0.05)
    if not report.idle or report.failed_runs or report.dead_tasks:
        raise SystemExit(f"the tail did not finish cleanly: {report}")
    return time.perf_counter() - started, report.runs


def _materialization_entry(key: AssetKey, partition: str, meta: dict[str, object]) -> EventLogEntry:
    event = DagsterEvent(
        event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
        event_specific_data=StepMaterializationData(
            AssetMaterialization(asset_key=key, partition=partition, metadata=meta)  # type: ignore[arg-type]
        ),
        job_name=RUNLESS_JOB_NAME,
    )
    return EventLogEntry(
        user_message="",
        level=logging.INFO,
        job_name=RUNLESS_JOB_NAME,
        run_id=RUNLESS_RUN_ID,
        error_info=None,
        timestamp=time.time(),
        dagster_event=event,
    )


def fine_instance(
    instance: DagsterInstance, ranges: list[tuple[int, int]], name: str | None = None
) -> float:
    """The baseline: one partition per range, each materialized. ``name`` is the partitions
    definition (default the stream asset's own, so its page lists them). Returns seconds."""
    started = time.perf_counter()
    keys = [range_partition_key(a, b) for a, b in ranges]
    instance.add_dynamic_partitions(name or partitions_def_name(JOB, STREAM), keys)
    asset = stream_asset_key(JOB, STREAM)
    for i in range(0, len(keys), EVENT_BATCH):
        instance.event_log_storage.store_event_batch(
            [
                _materialization_entry(asset, k, {"dataset_version": "bench", "row_count": 1})
                for k in keys[i : i + EVENT_BATCH]
            ]
        )
    return time.perf_counter() - started


def apply_sync(rt: Runtime, instance: DagsterInstance) -> tuple[int, int, int]:
    """Run ``partition_sync`` until done, applying it as the daemon would.
    Returns (added, deleted, materialized)."""
    added = deleted = mats = 0
    while True:
        sync = partition_sync(rt, instance)
        for name, keys in sync.add.items():
            instance.add_dynamic_partitions(name, keys)
            added += len(keys)
        for name, keys in sync.delete.items():
            for key in keys:
                instance.delete_dynamic_partition(name, key)
            deleted += len(keys)
        for event in sync.materializations:
            instance.report_runless_asset_event(event)
        mats += len(sync.materializations)
        if sync.done:
            return added, deleted, mats


def epoch_instance(rt: Runtime, instance: DagsterInstance) -> float:
    started = time.perf_counter()
    apply_sync(rt, instance)
    return time.perf_counter() - started


@contextmanager
def dagster_instance(storage: str) -> Iterator[DagsterInstance]:
    """A fresh Dagster instance: its storage in Postgres (what compose and AWS use; a new
    database on the scratch server) or in sqlite (Lite's default)."""
    if storage == "sqlite":
        with instance_for_test() as instance:
            yield instance
        return
    name = f"bench_scale_dagster_{uuid.uuid4().hex[:8]}"
    ensure_database(_servers[0], name)
    url = with_database(_servers[0], name).replace("postgresql://", "postgresql+psycopg2://", 1)
    with instance_for_test(overrides={"storage": {"postgres": {"postgres_url": url}}}) as instance:
        yield instance


@contextmanager
def graphql_context(instance: DagsterInstance) -> Iterator[object]:
    from dagster_graphql.test.utils import define_out_of_process_context

    with define_out_of_process_context(str(DEFS_FILE), "defs", instance) as ctx:
        yield ctx


def partitions_page(instance: DagsterInstance, repeat: int) -> tuple[list[float], int, int]:
    """Time the partitions page's query ``repeat`` times (after one warm-up). Returns the
    seconds of each, and the partition and materialized counts it returned."""
    from dagster_graphql.test.utils import execute_dagster_graphql

    variables = {"assetKey": {"path": stream_asset_key(JOB, STREAM).path}}
    times: list[float] = []
    with graphql_context(instance) as ctx:
        result = execute_dagster_graphql(ctx, PARTITION_HEALTH_QUERY, variables)  # type: ignore[arg-type]
        for _ in range(repeat):
            started = time.perf_counter()
            result = execute_dagster_graphql(ctx, PARTITION_HEALTH_QUERY, variables)  # type: ignore[arg-type]
            times.append(time.perf_counter() - started)
    if result.errors:
        raise SystemExit(f"GraphQL errors: {result.errors}")
    node = result.data["assetNodeOrError"]
    keys = node["partitionKeysByDimension"][0]["partitionKeys"]
    done = node["assetPartitionStatuses"]["materializedPartitions"]
    return times, len(keys), len(done)


def growth(args: argparse.Namespace) -> None:
    """``--growth``: one stream grown stage by stage through ``trace-lite up`` (see
    ``_scale_growth``); a table per stage and the ratio of time per range against the first."""
    import _scale_growth as g
    from dagster import DagsterInstance

    stages = [int(n) for n in args.growth.split(",")]
    rt = setup_env("trace-bench-growth-")
    home = rt.settings.resolved_home()
    os.environ.update(
        DAGSTER_HOME=str(home / "dagster"),
        TRACE_QUERY_PORT=str(free_port("127.0.0.1")),
        TRACE_WORKER_BATCH_SIZE=str(args.batch),
    )
    (home / "dagster").mkdir()
    env = dict(os.environ)
    log_path = home / "cli.log"
    print(
        f"growth: stages {stages} ranges of {args.chunk:,} blocks, {args.tail} tail ranges per "
        f"stage through `trace-lite up` (TRACE_CRYO_MODE=fake), the rest bulk-committed; "
        f"worker batch {args.batch}; epochs of {args.epoch:,} blocks"
    )
    with log_path.open("ab") as out:
        subprocess.run(
            [g.TRACE_LITE, "up", "--port", str(free_port("127.0.0.1"))],
            env=env, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=600,
        )  # fmt: skip
    results: list[g.Stage] = []
    try:
        pgids = g.stack_pgids(home)
        for n in stages:
            st = g.Stage(n, min(args.tail, n))
            scale = Scale(n * args.chunk, args.chunk, args.epoch, st.tail)
            if scale.bulk_end > 0:
                # the history first, as a finished job (to_block at its end): the daemon has
                # nothing to plan while its epochs are synced into Dagster here (in steady
                # state they complete one at a time; a bulk would make the daemon's periodic
                # sync backfill them during the tail, which is not the per-range cost)
                done = Scale(scale.bulk_end, args.chunk, args.epoch, 0)
                path = apply_stream(rt, done, apply=False)
                st.bulk_s = g.bulk(rt, path, JOB, STREAM, args.chunk, CHAIN_ID, scale.bulk_end)
                with DagsterInstance.get() as inst:
                    st.sync_s = epoch_instance(rt, inst)
            apply_stream(rt, scale)  # the tail: planned and run by the daemon
            with g.MemorySampler(pgids) as mem:
                g.wait_ranges(rt.dbs.state_url, JOB, STREAM, n, timeout=3600)
            st.phases, st.tail_s = g.phases(rt.dbs.state_url, JOB, scale.bulk_end)
            st.memory = mem.by_role()
            st.status_cli_s = [g.status_cli(env, JOB) for _ in range(3)]
            st.status_query_s = [g.status_query(rt, JOB) for _ in range(3)]
            st.db_bytes, st.rows = g.db_size(rt.dbs.state_url)
            with DagsterInstance.get() as inst:
                st.partitions = len(inst.get_dynamic_partitions(partitions_def_name(JOB, STREAM)))
            results.append(st)
            print_stage(st)
    finally:
        with log_path.open("ab") as out:
            subprocess.run([g.TRACE_LITE, "down"], env=env, stdout=out, stderr=subprocess.STDOUT)
    print_growth(results)


def queries(args: argparse.Namespace) -> None:
    """``--queries``: a count over N committed versions before and after compaction (see
    ``_scale_queries``); planning steps in process and ``trace-lite query`` end to end."""
    import _scale_queries as qb

    from trace_core.datasets.compaction import compact_levels
    from trace_core.datasets.ids import dataset_uuid
    from trace_core.datasets.retention import gc_versions

    stages = [int(n) for n in args.queries.split(",")]
    rt = setup_env("trace-bench-queries-")
    port = free_port("127.0.0.1")
    os.environ.update(
        TRACE_QUERY_ALLOW_FAKE="true",
        TRACE_QUERY_PORT=str(port),
        TRACE_QUERY_URL=f"http://127.0.0.1:{port}",
    )
    env = dict(os.environ)
    service = qb.start_service(env, rt.settings.resolved_home() / "query-service.log")
    atexit.register(service.terminate)
    window = args.window_ranges * args.qchunk
    tmpl = qb.template(rt.settings.resolved_home(), args.qchunk)
    duid = dataset_uuid(rt.settings.org_id, qb.CHAIN, qb.KEY)
    print(
        f"queries: stages {stages} versions of {args.qchunk} blocks (made-up rows, hard links of "
        f"one {args.qchunk}-row file, marked fake); compaction windows of {window:,} blocks "
        f"({args.window_ranges} ranges), {args.levels} tier(s) of 10x; `{qb.COUNT_SQL}`"
    )
    rows: list[qb.Measure] = []
    done = 0
    for n in stages:
        grown = qb.grow(rt, done, n, args.qchunk, tmpl)
        print(f"\n[{n:,} versions] registered {n - done:,} more in {grown:.1f}s")
        done = n
        before = qb.Measure(f"{n:,} ranges", n, n, extra={"n": n})
        if n <= args.max_uncompacted:
            measure(rt, env, before, qb)
            rows.append(before)
        if args.no_compact:
            continue
        t0 = time.perf_counter()
        with rt.state() as conn:
            report = compact_levels(
                conn, rt.store, duid, window, levels=args.levels, org_id=rt.settings.org_id
            )
        took = time.perf_counter() - t0
        print(f"  compaction: {report.line()} in {took:.1f}s "
              f"({report.versions_replaced / took if took else 0:,.0f} versions/s)")  # fmt: skip
        after = qb.Measure(f"{n:,} ranges, compacted", 0, 0, extra={"n": n, "compact_s": took})
        measure(rt, env, after, qb)
        rows.append(after)
        with rt.state() as conn:  # past the grace period: what a day later looks like
            gone = gc_versions(conn, rt.store, rt.settings.org_id, grace_seconds=0)
        print(f"  retention: {gone.lines()[0]}")
    print(
        f"\n{'history':<26} {'versions':>8} {'files':>7} {'resolve ms':>10} {'manifests ms':>12} "
        f"{'planning ms':>11} {'execute ms':>10} {'embedded s':>10} {'CPU s':>5} "
        f"{'HTTP cold s':>11} {'HTTP warm s':>11} {'POST s':>6}"
    )
    for m in rows:
        print(
            f"{m.label:<26} {m.versions:>8,} {m.files:>7,} {m.resolve * 1000:>10.0f} "
            f"{m.manifests * 1000:>12.0f} {m.planning * 1000:>11.0f} {m.execute * 1000:>10.0f} "
            f"{m.cli_wall:>10.2f} {m.cli_cpu:>5.2f} {m.http_cold:>11.2f} {m.http_warm:>11.2f} "
            f"{m.post_warm:>6.2f}"
        )
    compacted = [m for m in rows if "compacted" in m.label]
    if len(compacted) > 1:
        a, b = compacted[0], compacted[-1]
        print(
            f"\nratio {b.label} / {a.label}: planning {b.planning / a.planning:.2f}x, "
            f"POST /v1/query (warm) {b.post_warm / a.post_warm:.2f}x"
        )


def measure(rt: Runtime, env: dict[str, str], m: object, qb: object) -> None:  # noqa: ARG001
    import _scale_queries as q

    assert isinstance(m, q.Measure)
    q.in_process(rt, m)
    m.cli_wall, m.cli_cpu, _ = q.cli_query(env)
    m.http_cold = q.cli_query(env, "--http")[0]
    m.http_warm = q.cli_query(env, "--http")[0]
    m.post_warm, posted = q.post_query(rt.settings, env["TRACE_QUERY_URL"])
    if posted != m.count:
        raise SystemExit(f"the service counted {posted}, in process {m.count}")
    expected = (
        m.extra["n"] * rt.settings.resolved_home().joinpath("template.parquet").stat().st_size
    )
    del expected  # the count is checked against the rows registered instead
    print(
        f"  {m.label}: {m.versions:,} versions, {m.files:,} files; resolve {m.resolve * 1000:.0f} "
        f"ms, manifests {m.manifests * 1000:.0f} ms, execute {m.execute * 1000:.0f} ms; "
        f"trace-lite query embedded {m.cli_wall:.2f}s wall / {m.cli_cpu:.2f}s CPU, through the "
        f"service {m.http_cold:.2f}s cold, {m.http_warm:.2f}s warm; POST /v1/query warm "
        f"{m.post_warm:.2f}s; count {m.count:,}"
    )
    if m.count != m.extra["n"] * int(os.environ.get("BENCH_QCHUNK", "10")):
        raise SystemExit(f"count {m.count} != {m.extra['n']} ranges x rows per range")


def print_stage(st: object) -> None:
    import _scale_growth as g

    assert isinstance(st, g.Stage)
    ph = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in st.phases.items())
    mem = ", ".join(
        f"{k} {h / 1024:.0f}/{r / 1024:.0f} MB" for k, (h, r) in sorted(st.memory.items())
    )
    print(
        f"\n[{st.ranges:,} ranges] bulk {st.bulk_s:.1f}s, epochs synced {st.sync_s:.1f}s; tail {st.tail} ranges in {st.tail_s:.1f}s "
        f"= {st.tail / st.tail_s if st.tail_s else 0:.2f} ranges/s, {st.per_range_s * 1000:.0f} ms/range "
        f"(mean per range: {ph}); status CLI {statistics.median(st.status_cli_s):.2f}s, query "
        f"{statistics.median(st.status_query_s) * 1000:.0f} ms; state DB {st.db_bytes / 2**20:.0f} MB "
        f"{st.rows}; Dagster partitions {st.partitions:,}\n  memory peak/current: {mem}"
    )


def print_growth(results: list[object]) -> None:
    import _scale_growth as g

    rows = [r for r in results if isinstance(r, g.Stage)]
    if not rows:
        return
    base = rows[0]
    print(
        f"\n{'ranges':>8} {'ranges/s':>8} {'ms/range':>8} {'vs first':>8} {'status CLI s':>12} "
        f"{'status q ms':>11} {'state MB':>8} {'partitions':>10}"
    )
    for r in rows:
        print(
            f"{r.ranges:>8,} {r.tail / r.tail_s:>8.2f} {r.per_range_s * 1000:>8.0f} "
            f"{r.per_range_s / base.per_range_s:>7.2f}x {statistics.median(r.status_cli_s):>12.2f} "
            f"{statistics.median(r.status_query_s) * 1000:>11.0f} {r.db_bytes / 2**20:>8.0f} "
            f"{r.partitions:>10,}"
        )
    roles = sorted({k for r in rows for k in r.memory})
    print(f"\n{'process (peak MB)':<28}" + "".join(f"{r.ranges:>10,}" for r in rows))
    for role in roles:
        vals = "".join(
            f"{r.memory[role][0] / 1024:>10.0f}" if role in r.memory else f"{'-':>10}" for r in rows
        )
        print(f"{role[:28]:<28}{vals}")


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress as it goes
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--growth",
        default=None,
        help="comma-separated stage sizes in ranges (e.g. 1000,10000,100000): the growth mode",
    )
    parser.add_argument("--batch", type=int, default=8, help="growth: tasks per worker run")
    parser.add_argument(
        "--queries",
        default=None,
        help="comma-separated history sizes in versions (e.g. 1000,10000,100000): query mode",
    )
    parser.add_argument("--qchunk", type=int, default=10, help="queries: blocks per version")
    parser.add_argument(
        "--window-ranges", type=int, default=100, help="queries: versions per compaction window"
    )
    parser.add_argument(
        "--no-compact", action="store_true", help="queries: the uncompacted baseline only"
    )
    parser.add_argument("--levels", type=int, default=3, help="queries: compaction tiers")
    parser.add_argument(
        "--max-uncompacted",
        type=int,
        default=20_000,
        help="queries: measure the uncompacted baseline up to this many versions",
    )
    parser.add_argument("--blocks", type=int, default=104_000_000)
    parser.add_argument("--chunk", type=int, default=1_000)
    parser.add_argument("--epoch", type=int, default=100_000)
    parser.add_argument("--tail", type=int, default=16, help="ranges run through the real path")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--storage",
        choices=["postgres", "sqlite"],
        default="postgres",
        help="Dagster's storage (sqlite writes ~60 ms per event on a loaded box)",
    )
    parser.add_argument(
        "--migrate", action="store_true", help="also time re-keying the fine instance onto epochs"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    if args.growth:
        growth(args)
        return
    if args.queries:
        os.environ["BENCH_QCHUNK"] = str(args.qchunk)
        queries(args)
        return
    scale = Scale(args.blocks, args.chunk, args.epoch, args.tail)
    rt = setup_env()
    apply_stream(rt, scale)
    print(
        f"simulated: {scale.blocks:,} blocks, {scale.ranges:,} ranges of {scale.chunk:,}; "
        f"epochs of {scale.epoch:,}; {scale.tail} tail ranges through the real path "
        f"(TRACE_CRYO_MODE=fake); Dagster storage: {args.storage}"
    )
    bulk_s = bulk_commit(rt, scale)
    print(f"bulk-committed {scale.bulk_end:,} blocks as state rows in {bulk_s:.1f}s")
    rows: list[tuple[str, int, int, float, list[float]]] = []
    with dagster_instance(args.storage) as epochs_inst:
        setup_s = epoch_instance(rt, epochs_inst)
        tail_s, runs = drive_tail(rt, epochs_inst)
        print(f"tail: {scale.tail} ranges in {runs} runs, {tail_s:.1f}s (real path, fake cryo)")
        setup_s += epoch_instance(rt, epochs_inst)  # what the next periodic sync finds
        times, n, done = partitions_page(epochs_inst, args.repeat)
        rows.append(("epochs", n, done, setup_s, times))
    ranges = committed_ranges(rt)
    with dagster_instance(args.storage) as fine_inst:
        setup_s = fine_instance(fine_inst, ranges)
        times, n, done = partitions_page(fine_inst, args.repeat)
        rows.append(("fine ranges (baseline)", n, done, setup_s, times))
    print()
    print(
        f"{'partitioning':<24} {'partitions':>10} {'materialized':>12} {'setup s':>8} "
        f"{'page p50 ms':>11} {'page max ms':>11}"
    )
    for name, n, done, setup_s, times in rows:
        print(
            f"{name:<24} {n:>10,} {done:>12,} {setup_s:>8.1f} "
            f"{statistics.median(times) * 1000:>11.0f} {max(times) * 1000:>11.0f}"
        )
    fine, epochs = rows[1], rows[0]
    print(
        f"\nratio fine / epochs: partitions {fine[1] / epochs[1]:.0f}x, "
        f"partitions page p50 {statistics.median(fine[4]) / statistics.median(epochs[4]):.1f}x"
    )
    if args.migrate:
        # an instance as a Trace before epochs left it: range partitions under the old
        # definition name, each materialized; then the partition sync the dispatcher runs
        with dagster_instance(args.storage) as old_inst:
            fine_instance(
                old_inst, ranges, partitions_def_name(JOB, STREAM).removesuffix("__epochs")
            )
            started = time.perf_counter()
            added, deleted, mats = apply_sync(rt, old_inst)
            print(
                f"migrating a pre-epoch instance: +{added} epoch partitions, {mats} epoch "
                f"materializations, {deleted} keys deleted, {time.perf_counter() - started:.1f}s "
                f"({-(-mats // MAX_BACKFILLED_PER_SYNC)} dispatcher syncs)"
            )


if __name__ == "__main__":
    main()
