"""Analytics asset overhead: materializing ``analytics/<job>/balance_changes`` (+ supply_deltas)
for one partition vs the same SQL in raw DuckDB over the same Parquet files.

Writes a geth_balance_diffs-shaped dataset (cryo's exact columns; default 1,000,000 rows over
10,000 blocks, 50,000 accounts) as one committed version in an embedded Postgres + LocalStore,
then times, interleaved and after a warm-up:

- raw:     one DuckDB connection: the ``balance_changes`` SQL into a temp table, then both
           outputs COPY'd to Parquet (what the asset computes, nothing else);
- core:    ``trace_core.analytics.compute.balance_range`` (registry, manifest, SQL, Parquet,
           staging and the commit protocol);
- dagster: ``dagster.materialize`` of the partition in process with dagster-duckdb's
           DuckDBResource (run storage, events, metadata; an ephemeral instance).

Between rounds the outputs are unregistered so every round computes and commits again.
Target: dagster <= 1.2x raw per 1M input rows.

Run: .venv/bin/python benchmarks/bench_analytics.py [--rows N] [--repeat N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import psycopg
from _scratch import scratch_databases

from trace_core.analytics import compute
from trace_core.analytics.jobs import AnalyticsJob
from trace_core.chain_sync.analytics_spec import AnalyticsSpec
from trace_core.chain_sync.planner import range_partition_key
from trace_core.datasets import ids
from trace_core.datasets.commit import describe_parquet, register_version
from trace_core.datasets.manifest import DatasetManifest, ManifestFile
from trace_core.db.queries import q
from trace_core.settings import Settings
from trace_core.storage.local import LocalStore

CHAIN = 1
BLOCKS = 10_000
JOB = "bench"
STREAM = "geth_balance_diffs"

_DIFFS = """
COPY (
    SELECT (i * {blocks} // {rows})::UINTEGER AS block_number,
           (i % 50)::UBIGINT AS transaction_index,
           unhex(md5((i // 3)::VARCHAR) || md5((i // 3)::VARCHAR || 'x')) AS transaction_hash,
           unhex(md5((hash(i) % 50000)::VARCHAR) || '00000000') AS address,
           NULL::BLOB AS from_value_binary,
           ((hash(i * 7) % 10000000000000000)::HUGEINT * 1000000)::VARCHAR AS from_value_string,
           0.0::DOUBLE AS from_value_f64,
           NULL::BLOB AS to_value_binary,
           ((hash(i * 11) % 10000000000000000)::HUGEINT * 1000000)::VARCHAR AS to_value_string,
           0.0::DOUBLE AS to_value_f64,
           {chain}::UBIGINT AS chain_id
    FROM range(0, {rows}) t(i)
) TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 122880)
"""


def publish(settings: Settings, store: LocalStore, tmp: Path, rows: int) -> list[str]:
    """One committed geth_balance_diffs version over [0, BLOCKS); return its file URIs."""
    duid = ids.dataset_uuid(settings.org_id, CHAIN, STREAM)
    config = "cryo_ingest.geth_balance_diffs:v1"
    version = ids.dataset_version(duid, config, CHAIN, 0, BLOCKS)
    prefix = ids.version_prefix(CHAIN, duid, 0, BLOCKS, version)
    local = tmp / "diffs.parquet"
    with duckdb.connect() as con:
        con.execute(_DIFFS.format(rows=rows, blocks=BLOCKS, chain=CHAIN, path=local))
    info = describe_parquet(local)
    key = f"{prefix}network_1__geth_balance_diffs__00000000_to_{BLOCKS - 1:08}.parquet"
    store.put_file(key, local)
    data = local.read_bytes()
    manifest = DatasetManifest(
        dataset_uuid=duid,
        dataset_version=version,
        chain_id=CHAIN,
        dataset_key=STREAM,
        range_start=0,
        range_end=BLOCKS,
        config_hash=config,
        schema=info.schema,
        files=(ManifestFile(key, len(data), hashlib.sha256(data).hexdigest(), info.rows),),
    )
    store.put_bytes(ids.manifest_key(prefix), manifest.to_json())
    with psycopg.connect(_url(settings)) as conn, conn.transaction():
        register_version(
            conn,
            manifest,
            org_id=settings.org_id,
            storage_prefix=prefix,
            manifest_key=ids.manifest_key(prefix),
        )
    return [store.duckdb_uri(key)]


def _url(settings: Settings) -> str:
    return settings.state_url.get_secret_value() if settings.state_url else ""


def unregister_outputs(settings: Settings) -> None:
    """Forget the analytics outputs so the next round computes and commits again."""
    with psycopg.connect(_url(settings)) as conn:
        conn.execute(
            "DELETE FROM state.dataset_versions v USING state.datasets d "
            "WHERE v.dataset_uuid = d.dataset_uuid AND d.dataset_key LIKE 'analytics_%'"
        )


def raw_fn(files: list[str], out: Path) -> Callable[[], object]:
    listing = "[" + ", ".join(f"'{f}'" for f in files) + "]"

    def run() -> object:
        with duckdb.connect() as con:
            compute.prepare(con)
            con.execute(f"CREATE TEMP VIEW diffs AS SELECT * FROM read_parquet({listing})")
            con.execute(
                "CREATE TEMP TABLE balance_changes AS " + q("analytics_duckdb", "balance_changes")
            )
            con.execute(
                f"COPY (SELECT * FROM balance_changes) TO '{out}/a.parquet' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 1000000)"
            )
            con.execute(
                f"COPY ({q('analytics_duckdb', 'supply_deltas')}) TO '{out}/b.parquet' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 1000000)"
            )
        return None

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_analytics_") as tmpdir:
        tmp = Path(tmpdir)
        home = tmp / "home"
        home.mkdir()
        dbs = scratch_databases(tmp / "pg")
        os.environ.update(
            TRACE_HOME=str(home), TRACE_STATE_URL=dbs.state_url, TRACE_DATA_URL=dbs.data_url
        )
        from dagster import DagsterInstance, materialize
        from dagster_duckdb import DuckDBResource

        from trace_core.runtime import Runtime
        from trace_core.settings import load_settings
        from trace_dagster.analytics import job_assets
        from trace_dagster.partitions import partitions_def_name
        from trace_dagster.resources import TraceResource

        settings = load_settings()
        rt = Runtime(settings)
        store = rt.store
        assert isinstance(store, LocalStore)
        files = publish(settings, store, tmp, args.rows)
        job = AnalyticsJob(
            JOB,
            CHAIN,
            AnalyticsSpec.model_validate({"balance_diffs": STREAM, "genesis": {"zero": True}}),
            {STREAM: "geth_balance_diffs"},
        )
        key = range_partition_key(0, BLOCKS)
        instance = DagsterInstance.ephemeral()
        instance.add_dynamic_partitions(partitions_def_name(JOB, STREAM), [key])
        balance_assets = [a for a in job_assets(job) if "balance_range" in a.node_def.name]
        resources = {"trace": TraceResource(), "duckdb": DuckDBResource(database=":memory:")}
        out = tmp / "raw"
        out.mkdir()

        def core() -> object:
            unregister_outputs(settings)
            with rt.state() as state, duckdb.connect() as con:
                ctx = compute.Context(settings, store, state)
                return compute.balance_range(ctx, con, job, 0, BLOCKS)

        def dagster() -> object:
            unregister_outputs(settings)
            res = materialize(
                balance_assets, instance=instance, partition_key=key, resources=resources
            )
            assert res.success
            return res

        fns: dict[str, Callable[[], object]] = {
            "raw": raw_fn(files, out),
            "core": core,
            "dagster": dagster,
        }
        for fn in fns.values():
            fn()  # warm-up
        samples: dict[str, list[float]] = {n: [] for n in fns}
        for _ in range(args.repeat):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
        rt.close()
    med = {n: statistics.median(v) for n, v in samples.items()}
    per_m = 1_000_000 / args.rows
    print(f"geth_balance_diffs rows: {args.rows:,} over {BLOCKS:,} blocks; median of {args.repeat}")
    print(f"{'variant':<10}{'seconds':>10}{'s per 1M rows':>16}{'vs raw':>9}")
    for name in fns:
        print(
            f"{name:<10}{med[name]:>10.3f}{med[name] * per_m:>16.3f}{med[name] / med['raw']:>8.2f}x"
        )
    ratio = med["dagster"] / med["raw"]
    print(f"dagster / raw = {ratio:.2f}x (target <= 1.20x): {'OK' if ratio <= 1.2 else 'OVER'}")


if __name__ == "__main__":
    main()
