"""bench_scale.py ``--queries``: a query over a long history of committed versions, before and
after compaction (``trace_core.datasets.compaction``).

One ``blocks`` dataset grows stage by stage to N committed versions of ``chunk`` blocks
(default 10 blocks, as the growth probe that measured 4.0 s at 2,000 ranges and 36.3 s at
13,300). **The data is made up and marked fake** (the bench sets TRACE_QUERY_ALLOW_FAKE):
every version's Parquet is a hard link of one 10-row file (block numbers repeat; a count and
the planning do not depend on the values), its manifest and registry row are real, written in
bulk. Per stage it times:

- ``trace-lite query --sql "SELECT count(*) FROM blocks"`` as a user runs it (a new process,
  the embedded Query Service: token, grants, gate, manifests, sandbox, a worker process,
  audit), wall and CPU;
- in process, the planning steps of the same query: resolving the visible versions
  (``attach.user_versions``), reading and checking their manifests (``attach.attach`` with a
  cold cache, as a new process has), opening the sandbox and running the count (``engine``);

then compacts the stream into windows of ``window`` blocks (the job's epoch in production) and
times the same again.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq

TRACE_LITE = str(Path(sys.executable).with_name("trace-lite"))
CHAIN, KEY, CONFIG = 143, "blocks", "cryo_ingest.blocks:v1"
COUNT_SQL = "SELECT count(*) FROM blocks"


@dataclass
class Measure:
    label: str
    versions: int  # live versions readers resolve
    files: int
    cli_wall: float = 0.0  # embedded: a new process answers in process
    cli_cpu: float = 0.0
    http_cold: float = 0.0  # through the running Query Service, first query after the change
    http_warm: float = 0.0  # the same again (its manifest cache warm)
    post_warm: float = 0.0  # POST /v1/query from this process (no CLI start-up), warm
    resolve: float = 0.0
    manifests: float = 0.0
    execute: float = 0.0
    count: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def planning(self) -> float:
        return self.resolve + self.manifests


def template(dir_: Path, rows: int) -> tuple[Path, int, str, tuple[Any, ...]]:
    """One small blocks-like Parquet file; returns (path, size, sha256, schema columns)."""
    from trace_core.datasets.commit import describe_parquet

    path = dir_ / "template.parquet"
    pq.write_table(
        pa.table(
            {
                "block_number": pa.array(range(rows), pa.uint32()),
                "gas_used": pa.array(range(rows), pa.uint64()),
                "timestamp": pa.array(range(rows), pa.uint32()),
            }
        ),
        path,
    )
    data = path.read_bytes()
    return path, len(data), hashlib.sha256(data).hexdigest(), describe_parquet(path).schema


def grow(rt: Any, start_range: int, end_range: int, chunk: int, tmpl: tuple[Any, ...]) -> float:
    """Register versions for ranges ``[start_range, end_range)`` (in ranges); seconds."""
    from trace_core.datasets import ids
    from trace_core.datasets.manifest import DatasetManifest, ManifestFile

    path, size, sha, schema = tmpl
    rows = pq.read_metadata(path).num_rows
    duid = ids.dataset_uuid(rt.settings.org_id, CHAIN, KEY)
    t0 = time.perf_counter()
    records = []
    source = path.with_name(f"template-{start_range}.parquet")
    shutil.copyfile(path, source)
    for i in range(start_range, end_range):
        a, b = i * chunk, (i + 1) * chunk
        version = ids.dataset_version(duid, CONFIG, CHAIN, a, b, fake=True)
        prefix = ids.version_prefix(CHAIN, duid, a, b, version)
        key = f"{prefix}network_{CHAIN}__blocks__{a:08}_to_{b - 1:08}.parquet"
        target = Path(rt.store.duckdb_uri(key))
        target.parent.mkdir(parents=True, exist_ok=True)
        if i % 50_000 == 0:  # a file takes at most 65,000 hard links (ext4): a fresh copy
            source = path.with_name(f"template-{i}.parquet")
            shutil.copyfile(path, source)
        os.link(source, target)
        manifest = DatasetManifest(
            dataset_uuid=duid, dataset_version=version, chain_id=CHAIN, dataset_key=KEY,
            range_start=a, range_end=b, config_hash=CONFIG, schema=schema,
            files=(ManifestFile(key, size, sha, rows),), fake=True,
        )  # fmt: skip
        mkey = ids.manifest_key(prefix)
        Path(rt.store.duckdb_uri(mkey)).write_bytes(manifest.to_json())
        records.append(
            (
                version,
                duid,
                CHAIN,
                a,
                b,
                CONFIG,
                manifest.schema_hash,
                prefix,
                mkey,
                rows,
                size,
                1,
                True,
            )
        )
    with psycopg.connect(rt.dbs.state_url) as conn:
        conn.execute(
            "INSERT INTO state.datasets (dataset_uuid, org_id, chain_id, dataset_key) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (duid, uuid.UUID(str(rt.settings.org_id)), CHAIN, KEY),
        )
        with conn.cursor().copy(
            "COPY state.dataset_versions (dataset_version, dataset_uuid, chain_id, range_start, "
            "range_end, config_hash, schema_hash, storage_prefix, manifest_key, row_count, bytes, "
            "file_count, fake) FROM STDIN"
        ) as copy:
            for rec in records:
                copy.write_row(rec)
    with psycopg.connect(rt.dbs.state_url, autocommit=True) as conn:
        conn.execute("ANALYZE state.dataset_versions")
    return time.perf_counter() - t0


def cli_query(env: dict[str, str], mode: str = "--embedded") -> tuple[float, float, str]:
    """``trace-lite query`` in a new process: wall seconds, CPU seconds (its own and its
    children's: the engine worker), and its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [TRACE_LITE, "query", mode, "--sql", COUNT_SQL, "--json"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"trace-lite query failed: {proc.stdout[-500:]} {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def in_process(rt: Any, m: Measure) -> None:
    """Time the planning steps of the count and run it in process (a cold manifest cache)."""
    from trace_core.query.attach import ManifestCache, attach, user_versions
    from trace_core.query.client import local_user_token
    from trace_core.query.engine import ResultLimits, execute
    from trace_core.query.sandbox import EngineConfig, Workdir
    from trace_core.query.tokens import verify_user_token

    s = rt.settings
    claims = verify_user_token(s, local_user_token(s))
    t0 = time.perf_counter()
    with rt.state() as conn:
        versions = user_versions(conn, claims, requested=[KEY])
    t1 = time.perf_counter()
    relations = attach(
        rt.store, versions, [KEY], max_manifest_bytes=s.query_manifest_max_bytes,
        max_files=s.query_manifest_max_files, cache=ManifestCache(),
    )  # fmt: skip
    t2 = time.perf_counter()
    work = Workdir(s.resolved_home() / "query")
    try:
        result = execute(
            COUNT_SQL, relations, EngineConfig.from_settings(s), ResultLimits(1000, 1 << 20), work
        )
    finally:
        work.cleanup()
    t3 = time.perf_counter()
    m.resolve, m.manifests, m.execute = t1 - t0, t2 - t1, t3 - t2
    m.versions = len(versions[KEY])
    m.files = sum(len(r.all_files) for r in relations)
    m.count = int(result.batches[0].column(0)[0].as_py())


def start_service(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``trace-lite query-service`` on ``env``'s TRACE_QUERY_PORT; waits until it answers."""
    import httpx

    out = log.open("ab")
    proc = subprocess.Popen([TRACE_LITE, "query-service"], env=env, stdout=out, stderr=out)
    url = env["TRACE_QUERY_URL"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"query service exited {proc.returncode}; see {log}")
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"query service did not answer; see {log}")


def post_query(settings: Any, url: str) -> tuple[float, int]:
    """One ``POST /v1/query`` of the count from this process; (seconds, the count)."""
    import httpx

    from trace_core.query.client import local_user_token

    headers = {"Authorization": f"Bearer {local_user_token(settings)}"}
    t0 = time.perf_counter()
    resp = httpx.post(f"{url}/v1/query", json={"sql": COUNT_SQL}, headers=headers, timeout=600)
    took = time.perf_counter() - t0
    resp.raise_for_status()
    return took, int(resp.json()["rows"][0][0])
