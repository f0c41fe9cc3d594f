"""Several hosts, one deployment: independent ``trace-lite run --until-idle`` processes, each with
its own Trace home and DAGSTER_HOME (deploy/dagster.yaml), sharing one standalone Postgres over
TCP with a password (standing in for RDS), moto's SQS as the queue driver and moto's S3 as the
object store, sync one chain_sync job from a real anvil chain with real cryo.

Each process runs the dispatcher and worker sensors, so planning, publishing, reaping and
claiming all race across processes. The result must be exact: every range committed once, one
dataset version per range, Parquet matching the chain, one materialization per partition in
the shared Dagster storage.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import duckdb
import psycopg
import pytest
from dagster import DagsterInstance

from tests.standalone_postgres import StandalonePostgres
from trace_core.chain_sync.planner import range_partition_key
from trace_core.settings import REPO_ROOT
from trace_dagster.partitions import stream_asset_key
from trace_lite.devtools.devchain import DevChain

DEPLOY_DAGSTER_YAML = REPO_ROOT / "deploy" / "dagster.yaml"
HOSTS = 3
FROM_BLOCK, TO_BLOCK, RANGE, EPOCH = 0, 2000, 250, 1000
STREAMS = ("blocks", "transactions", "logs")
JOB = """kind: chain_sync
name: multi
chain_id: {chain_id}
epoch_blocks: 1000
mode: {{kind: fixed_target, from_block: {start}, to_block: {end}}}
streams:
""" + "".join(
    f"  {s}: {{{{cryo_dataset_name: {s}, rpc_pool: multi, chunk_size: {RANGE}, max_inflight: 4}}}}\n"
    for s in STREAMS
)


@pytest.fixture  # one server per test: each variant starts from empty state, like a new deploy
def shared_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandalonePostgres]:
    with StandalonePostgres(tmp_path_factory.mktemp("rds") / "pg") as pg:
        yield pg


def _trace_lite(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "trace-lite"), *args]


def _host_env(base: dict[str, str], home: Path) -> dict[str, str]:
    """One host: its own Trace home and DAGSTER_HOME holding deploy/dagster.yaml."""
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copyfile(DEPLOY_DAGSTER_YAML, dagster_home / "dagster.yaml")
    return base | {"TRACE_HOME": str(home), "DAGSTER_HOME": str(dagster_home)}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("continue_seconds", ["0", "60"])
def test_independent_hosts_sync_one_job_exactly(
    continue_seconds: str,
    shared_postgres: StandalonePostgres,
    moto_server_url: str,
    anvil_chain: DevChain,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pg = shared_postgres
    run_id = uuid.uuid4().hex[:8]
    bucket = f"trace-multi-{run_id}"
    # psycopg2 named: dagster-postgres fails on psycopg 3, SQLAlchemy 2.1's default driver
    dagster_pg_url = pg.create_database(f"dagster_{run_id}").replace(
        "postgresql://", "postgresql+psycopg2://"
    )
    boto_kw = {"endpoint_url": moto_server_url, "region_name": "us-east-1"}
    boto3.client("s3", **boto_kw).create_bucket(Bucket=bucket)  # AWS buckets pre-exist

    base = {k: v for k, v in os.environ.items() if not k.startswith(("TRACE_", "DAGSTER_"))}
    base |= {
        # Trace: RDS-like Postgres over TCP, SQS, S3 (all shared by every host)
        "TRACE_DATABASE_URL": pg.url,
        "TRACE_QUEUE_DRIVER": "sqs",
        "TRACE_SQS_ENDPOINT_URL": moto_server_url,
        "TRACE_SQS_QUEUE_PREFIX": f"multi-{run_id}-",
        "TRACE_OBJECT_STORE_URL": f"s3://{bucket}/trace",
        "TRACE_S3_ENDPOINT_URL": moto_server_url,
        "TRACE_RPC_POOL_MULTI_URL": anvil_chain.rpc_url,
        "TRACE_CRYO_MODE": "real",
        "TRACE_WORKER_BATCH_SIZE": "2",
        "TRACE_RETRY_BASE_SECONDS": "0",
        # 0: every wave goes through the sensors of whichever host ticks; 60 (the default): a
        # run also plans and takes the next wave itself, racing the other hosts for it
        "TRACE_WORKER_CONTINUE_SECONDS": continue_seconds,
        "TRACE_JWT_KEYS": json.dumps({"k1": secrets.token_urlsafe(32)}),  # one key, every host
        # Dagster: deploy/dagster.yaml's variables (storage shared, ECS launcher unused here:
        # `run --until-idle` executes runs in its own process)
        "DAGSTER_PG_URL": dagster_pg_url,
        "DAGSTER_MAX_CONCURRENT_RUNS": "4",
        "DAGSTER_COMPUTE_LOGS_BUCKET": bucket,
        "AWS_ENDPOINT_URL": moto_server_url,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    # The deploy steps, once: Trace migrations, Dagster's schema, the job.
    admin = _host_env(base, tmp_path / "admin")
    job_file = tmp_path / "multi.yaml"
    job_file.write_text(JOB.format(chain_id=anvil_chain.chain_id, start=FROM_BLOCK, end=TO_BLOCK))
    for args in (("migrate",), ("apply", "--file", str(job_file))):
        done = subprocess.run(
            _trace_lite(*args), env=admin, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
    for name in (
        "DAGSTER_PG_URL",
        "DAGSTER_MAX_CONCURRENT_RUNS",
        "DAGSTER_COMPUTE_LOGS_BUCKET",
        "AWS_ENDPOINT_URL",
        "AWS_DEFAULT_REGION",
    ):
        monkeypatch.setenv(name, admin[name])  # this process opens the same instance below
    with DagsterInstance.from_config(admin["DAGSTER_HOME"]) as instance:
        instance.get_runs(limit=1)  # creates dagster-postgres's schema once, as a deploy step

    # The hosts, started together.
    logs = [tmp_path / f"host{i}.log" for i in range(HOSTS)]
    started = time.monotonic()
    procs = []
    for i in range(HOSTS):
        env = _host_env(base, tmp_path / f"host{i}")
        with open(logs[i], "w") as log_file:
            procs.append(
                subprocess.Popen(
                    _trace_lite("run", "--until-idle", "--timeout", "200"),
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    elapsed = time.monotonic() - started
    outputs = [log.read_text() for log in logs]
    for i, (code, out) in enumerate(zip(codes, outputs, strict=True)):
        assert code == 0, f"host{i} exited {code}:\n{out[-3000:]}"
        assert "idle=True" in out, out[-2000:]
    runs_per_host = [int(re.findall(r"done: .*? runs=(\d+)", out)[-1]) for out in outputs]
    print(f"{HOSTS} hosts idle after {elapsed:.1f}s; runs per host: {runs_per_host}")
    if continue_seconds == "0":
        # The hosts really shared the work (each one's dispatcher plans what it frees up, and a
        # host busy with its runs does not receive meanwhile): in every run so far all three did.
        assert sum(1 for n in runs_per_host if n) >= 2, runs_per_host
    # With continuing runs the first run may keep every wave it frees (a small job here);
    # either way what follows must hold: each range exactly once, one version, the chain's rows.

    ranges = [(s, r) for s in STREAMS for r in range(FROM_BLOCK, TO_BLOCK, RANGE)]
    state_url = re.sub(r"/postgres$", "/trace_state", pg.url)
    with psycopg.connect(state_url) as conn:
        tasks = conn.execute(
            """SELECT t.payload->>'dataset_key', (t.payload->>'range_start')::bigint, t.status,
                      t.attempt
               FROM state.tasks t JOIN state.chain_sync_jobs j ON j.job_id = t.job_id
               WHERE j.name = 'multi'"""
        ).fetchall()
        versions = conn.execute(
            """SELECT d.dataset_key, v.range_start, v.range_end, v.row_count, v.storage_prefix,
                      v.attempt
               FROM state.dataset_versions v JOIN state.datasets d USING (dataset_uuid)
               WHERE d.chain_id = %s""",
            (anvil_chain.chain_id,),
        ).fetchall()
    # every range planned once and committed once
    assert sorted((k, s) for k, s, _, _ in tasks) == sorted(ranges)
    assert {status for _, _, status, _ in tasks} == {"succeeded"}
    # exactly one dataset version per range, no duplicates, no extras
    assert sorted((k, s) for k, s, *_ in versions) == sorted(ranges)
    assert all(e - s == RANGE for _, s, e, *_ in versions)
    rows = {key: sum(v[3] for v in versions if v[0] == key) for key in STREAMS}
    assert rows == {
        "blocks": TO_BLOCK - FROM_BLOCK,
        "transactions": anvil_chain.count_transactions(FROM_BLOCK, TO_BLOCK),
        "logs": anvil_chain.count_logs(FROM_BLOCK, TO_BLOCK),
    }

    # The Parquet in S3 itself: counts and distinct blocks equal the chain; nothing but the
    # committed versions under the dataset prefixes.
    s3 = boto3.client("s3", **boto_kw)
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="trace/")
        for o in page.get("Contents", [])
    ]
    committed = {f"trace/{v[4]}" for v in versions}
    parquet = [k for k in keys if k.endswith(".parquet")]
    assert parquet and {k[: k.rindex("/") + 1] for k in parquet} <= committed
    con = duckdb.connect()
    _load_httpfs(con)
    host = moto_server_url.removeprefix("http://")
    con.execute(
        f"""CREATE SECRET moto (TYPE s3, KEY_ID 'testing', SECRET 'testing', REGION 'us-east-1',
            ENDPOINT '{host}', USE_SSL false, URL_STYLE 'path')"""
    )
    for key in STREAMS:
        files = [f"s3://{bucket}/{k}" for k in parquet if f"__{key}__" in k]
        n, distinct = con.execute(
            "SELECT count(*), count(DISTINCT block_number) FROM read_parquet(?)", [files]
        ).fetchone() or (0, 0)
        assert n == rows[key], key
        if key == "blocks":
            assert distinct == TO_BLOCK - FROM_BLOCK

    # Nothing was dead-lettered on any SQS queue.
    sqs = boto3.client("sqs", **boto_kw)
    queues = sqs.list_queues(QueueNamePrefix=f"multi-{run_id}-").get("QueueUrls", [])
    dead = [q for q in queues if q.endswith("-dlq")]
    assert dead, queues
    for url in dead:
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attrs["ApproximateNumberOfMessages"] == "0", url

    # Dagster's shared storage: every epoch materialized, whoever ran its ranges, recording
    # the version of each of its ranges (two runs committing an epoch's last ranges at once
    # may both report it, with the same content)
    with DagsterInstance.from_config(admin["DAGSTER_HOME"]) as instance:
        for key in STREAMS:
            records = instance.fetch_materializations(
                stream_asset_key("multi", key), limit=1000, ascending=True
            ).records
            newest = {r.partition_key: r.asset_materialization for r in records}
            assert sorted(str(k) for k in newest) == [
                range_partition_key(s, s + EPOCH) for s in range(FROM_BLOCK, TO_BLOCK, EPOCH)
            ]
            for k, mat in newest.items():
                start = int(str(k).split("-")[0])
                assert mat is not None and sorted(mat.metadata["dataset_versions"].value) == [  # type: ignore[arg-type]
                    range_partition_key(s, s + RANGE) for s in range(start, start + EPOCH, RANGE)
                ]


def _load_httpfs(con: duckdb.DuckDBPyConnection) -> None:
    import duckdb_extensions

    duckdb_extensions.import_extension("httpfs", con=con)
    con.execute("LOAD httpfs")
