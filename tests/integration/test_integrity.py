"""integrity_check on ranges synced by real cryo from the anvil fixture: tamper each way,
detect it (range + file), repair through the normal task/commit path, verify clean again."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from dagster import AssetCheckKey, instance_for_test

from trace_core.chain_sync import store
from trace_core.chain_sync.yamlload import load_job_file
from trace_core.cli.main import cli
from trace_core.datasets import registry
from trace_core.db.migrate import migrate
from trace_core.engine.dispatcher import dispatch_tick
from trace_core.engine.execute import execute_task
from trace_core.integrity import verify
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_dagster.integrity import CHECK_NAME, integrity_job
from trace_dagster.partitions import partitions_def_name, stream_asset_key
from trace_dagster.resources import TraceResource
from trace_lite.devtools.devchain import DevChain

JOB = """kind: chain_sync
name: integ
chain_id: {chain_id}
mode: {{kind: fixed_target, from_block: 0, to_block: 600}}
epoch_blocks: 200
streams:
  blocks: {{cryo_dataset_name: blocks, rpc_pool: integ, chunk_size: 200, max_inflight: 3}}
  transactions: {{cryo_dataset_name: transactions, rpc_pool: integ, chunk_size: 200, max_inflight: 3}}
  logs: {{cryo_dataset_name: logs, rpc_pool: integ, chunk_size: 200, max_inflight: 3}}
"""


def run_until_idle(rt: Runtime, limit: int = 50) -> int:
    """Dispatcher ticks + the worker's execute_task on every queued task, until none is left."""
    ran = 0
    for _ in range(limit):
        dispatch_tick(rt)
        with rt.state() as conn:
            queued = [
                r[0]
                for r in conn.execute(
                    "SELECT task_id FROM state.tasks WHERE status = 'queued' ORDER BY task_id"
                ).fetchall()
            ]
        if not queued:
            return ran
        for task_id in queued:
            outcome = execute_task(rt, task_id)
            assert outcome.status == "succeeded", outcome.error
            ran += 1
    raise AssertionError("tasks kept coming")


@pytest.fixture
def synced(
    trace_env: Runtime, anvil_chain: DevChain, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Runtime:
    monkeypatch.setenv("TRACE_RPC_POOL_INTEG_URL", anvil_chain.rpc_url)
    rt = Runtime(load_settings())
    migrate(rt.dbs)
    job_file = tmp_path / "integ.yaml"
    job_file.write_text(JOB.format(chain_id=anvil_chain.chain_id))
    spec, raw = load_job_file(job_file)
    with rt.state() as conn:
        store.apply_job(conn, rt.settings.org_id, spec, raw, str(job_file))
    assert run_until_idle(rt) == 9
    return rt


def _version(rt: Runtime, key: str, start: int) -> registry.VersionRecord:
    with rt.state() as conn:
        recs = registry.versions_for_stream(conn, rt.settings.org_id, 31337, key)
    return next(r for r in recs if r.range_start == start)


def _parquet(rt: Runtime, rec: registry.VersionRecord) -> str:
    return next(o.key for o in rt.store.list(rec.storage_prefix) if o.key.endswith(".parquet"))


def _path(rt: Runtime, key: str) -> Path:
    return Path(rt.store.duckdb_uri(key))


def test_tampered_truncated_deleted_and_foreign_files_are_found_and_repaired(
    synced: Runtime, anvil_chain: DevChain
) -> None:
    rt = synced
    assert anvil_chain.chain_id == 31337
    clean = verify.verify(rt, job="integ")
    assert [r.dataset_key for r in clean] == ["blocks", "logs", "transactions"]
    assert all(r.passed and r.rpc_checked and len(r.ranges) == 3 for r in clean), [
        r.as_json() for r in clean
    ]

    # tamper: flip one byte in the middle of a blocks file (same size)
    blocks0 = _version(rt, "blocks", 0)
    tampered = _parquet(rt, blocks0)
    data = bytearray(_path(rt, tampered).read_bytes())
    data[len(data) // 2] ^= 0xFF
    _path(rt, tampered).write_bytes(bytes(data))
    # truncate a transactions file
    tx200 = _version(rt, "transactions", 200)
    truncated = _parquet(rt, tx200)
    p = _path(rt, truncated)
    p.write_bytes(p.read_bytes()[:100])
    # delete a logs file
    logs400 = _version(rt, "logs", 400)
    deleted = _parquet(rt, logs400)
    rt.store.delete(deleted)
    # a foreign object in a blocks version prefix
    blocks400 = _version(rt, "blocks", 400)
    foreign = blocks400.storage_prefix + "extra.parquet"
    rt.store.put_bytes(foreign, b"not ours")
    untouched = {
        (k, s): _version(rt, k, s).dataset_version
        for k in ("blocks", "transactions", "logs")
        for s in (0, 200, 400)
    }

    reports = {r.dataset_key: r for r in verify.verify(rt, job="integ")}
    found = {
        (key, f.range_start, f.range_end, f.kind, f.file)
        for key, r in reports.items()
        for f in r.findings
    }
    assert found == {
        ("blocks", 0, 200, "tampered", tampered),
        ("transactions", 200, 400, "truncated", truncated),
        ("logs", 400, 600, "missing_file", deleted),
        ("blocks", 400, 600, "foreign_file", foreign),
    }
    # --range narrows the check to the overlapping ranges
    only = verify.verify(rt, job="integ", stream="blocks", block_range=(450, 500))[0]
    assert [(r.range_start, r.passed) for r in only.ranges] == [(400, False)]

    # the scheduled pass reports each range on its epoch partition (epoch_blocks 200: one
    # range each); failures fail the check
    with instance_for_test() as instance:
        for key in ("blocks", "transactions", "logs"):
            instance.add_dynamic_partitions(
                partitions_def_name("integ", key),
                [f"{s:012d}-{s + 200:012d}" for s in (0, 200, 400)],
            )
        run = integrity_job.execute_in_process(
            instance=instance, resources={"trace": TraceResource()}, raise_on_error=False
        )
        assert not run.success  # broken ranges fail the pass run
        status = {}
        for key in ("blocks", "transactions", "logs"):
            check = AssetCheckKey(stream_asset_key("integ", key), CHECK_NAME)
            for rec in instance.event_log_storage.get_asset_check_execution_history(
                check, limit=20
            ):
                status[(key, rec.partition)] = rec.status.value
        assert len(status) == 9
        failed = {k for k, v in status.items() if v == "FAILED"}
        assert failed == {
            ("blocks", "000000000000-000000000200"),
            ("transactions", "000000000200-000000000400"),
            ("logs", "000000000400-000000000600"),
            ("blocks", "000000000400-000000000600"),
        }

    # verify --repair plans exactly the four ranges, once
    out = CliRunner().invoke(cli, ["verify", "--job", "integ", "--repair", "--json"])
    assert out.exit_code == 0, out.output
    repairs = json.loads(out.stdout)["repairs"]
    assert sorted((r["stream"], r["range"][0], r["new"]) for r in repairs) == [
        ("blocks", 0, True),
        ("blocks", 400, True),
        ("logs", 400, True),
        ("transactions", 200, True),
    ]
    again = CliRunner().invoke(cli, ["verify", "--job", "integ", "--repair", "--json"])
    assert sorted(r["new"] for r in json.loads(again.stdout)["repairs"]) == [False] * 4
    with rt.data() as conn:
        corrections = conn.execute(
            "SELECT count(*) FROM data.data_invalidations WHERE reason = 'correction'"
        ).fetchone()
    assert corrections == (4,)

    assert run_until_idle(rt) == 4
    after = {
        (k, s): _version(rt, k, s).dataset_version
        for k in ("blocks", "transactions", "logs")
        for s in (0, 200, 400)
    }
    changed = {k for k in after if after[k] != untouched[k]}
    assert changed == {("blocks", 0), ("transactions", 200), ("logs", 400), ("blocks", 400)}
    final = verify.verify(rt, job="integ")
    assert all(r.passed for r in final), [r.as_json() for r in final]
    # the broken versions stay registered (history), they just serve nothing any more
    with rt.state() as conn:
        assert registry.get_version(conn, untouched[("blocks", 0)]) is not None
    ok = CliRunner().invoke(cli, ["verify", "--job", "integ"])
    assert ok.exit_code == 0, ok.output


def test_rows_that_disagree_with_the_chain_are_found(synced: Runtime) -> None:
    """A transactions version whose files match its manifest but miss rows (an RPC that
    omitted them) fails the tx-count check; a bad --range or stream is refused clearly."""
    import hashlib

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rt = synced
    rec = _version(rt, "transactions", 0)
    key = _parquet(rt, rec)
    table = pq.read_table(_path(rt, key))
    busy = table.column("block_number")[0].as_py()
    table = table.filter(pc.not_equal(table.column("block_number"), busy))
    pq.write_table(table, _path(rt, key))
    data = _path(rt, key).read_bytes()
    manifest = json.loads(rt.store.get_bytes(rec.manifest_key))
    manifest["files"][0].update(
        size=len(data), sha256=hashlib.sha256(data).hexdigest(), rows=table.num_rows
    )
    rt.store.put_bytes(rec.manifest_key, json.dumps(manifest, sort_keys=True).encode())
    with rt.state() as conn:
        conn.execute(
            "UPDATE state.dataset_versions SET row_count = %s, bytes = %s WHERE dataset_version = %s",
            (table.num_rows, len(data), rec.dataset_version),
        )
    report = verify.verify(rt, job="integ", stream="transactions")[0]
    assert [(f.kind, f.range_start) for f in report.findings] == [("tx_count", 0)]
    assert f"first block {busy}" in report.findings[0].detail

    bad = CliRunner().invoke(cli, ["verify", "--job", "integ", "--range", "9-3"])
    assert bad.exit_code != 0 and "--range" in bad.output
    bad = CliRunner().invoke(cli, ["verify", "--job", "integ", "--stream", "nope"])
    assert bad.exit_code == 1 and "no stream 'nope'" in bad.output
    with rt.state() as conn:
        assert conn.execute(
            "SELECT count(*) FROM state.tasks WHERE status = 'queued'"
        ).fetchone() == (0,)


S3_JOB = """kind: chain_sync
name: integ_s3
chain_id: {chain_id}
mode: {{kind: fixed_target, from_block: 0, to_block: 400}}
streams:
  blocks: {{cryo_dataset_name: blocks, rpc_pool: integ, chunk_size: 200, max_inflight: 2}}
"""


def test_same_checks_and_repair_on_s3(
    trace_env: Runtime,
    anvil_chain: DevChain,
    moto_server_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The checks use only the ObjectStore API: on S3 (moto's server) a tampered object and a
    foreign one are found, and the repair commits new versions there."""
    from trace_core.storage.s3 import S3Store

    bucket = f"integ-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("TRACE_OBJECT_STORE_URL", f"s3://{bucket}/trace")
    monkeypatch.setenv("TRACE_S3_ENDPOINT_URL", moto_server_url)
    monkeypatch.setenv("TRACE_RPC_POOL_INTEG_URL", anvil_chain.rpc_url)
    rt = Runtime(load_settings())
    assert isinstance(rt.store, S3Store)
    rt.store.ensure_bucket()
    migrate(rt.dbs)
    job_file = tmp_path / "s3.yaml"
    job_file.write_text(S3_JOB.format(chain_id=anvil_chain.chain_id))
    spec, raw = load_job_file(job_file)
    with rt.state() as conn:
        store.apply_job(conn, rt.settings.org_id, spec, raw, str(job_file))
    assert run_until_idle(rt) == 2
    with rt.state() as conn:
        first, second = registry.versions_for_stream(conn, rt.settings.org_id, 31337, "blocks")
    key = _parquet(rt, first)
    data = bytearray(rt.store.get_bytes(key))
    data[-100] ^= 0x10
    rt.store.put_bytes(key, bytes(data))
    rt.store.put_bytes(second.storage_prefix + "notes.txt", b"left by someone")

    [report] = verify.verify(rt, job="integ_s3")
    assert {(f.kind, f.range_start, f.file) for f in report.findings} == {
        ("tampered", 0, key),
        ("foreign_file", 200, second.storage_prefix + "notes.txt"),
    }
    out = CliRunner().invoke(cli, ["verify", "--job", "integ_s3", "--repair"])
    assert out.exit_code == 0 and "repair planned" in out.stdout, out.output
    assert run_until_idle(rt) == 2
    [after] = verify.verify(rt, job="integ_s3")
    assert after.passed and after.rpc_checked, after.as_json()
    assert {r.dataset_version for r in after.ranges}.isdisjoint(
        {str(first.dataset_version), str(second.dataset_version)}
    )


def test_scheduled_passes_verify_new_ranges_then_a_sample_within_the_rpc_budget(
    synced: Runtime, anvil_chain: DevChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """9 new ranges (3 streams x 3): each pass verifies never-verified ones first within the
    budget of estimated RPC calls (blocks 201, transactions 200, logs 400 per range), then the
    stalest verified ones up to the sample; the node sees no more calls than the budget."""
    from trace_core.integrity import incremental
    from trace_lite.devtools.rpcproxy import FaultProxy

    rt = Runtime(
        synced.settings.model_copy(
            update={"integrity_rpc_calls_per_pass": 1100, "integrity_sample_ranges": 2}
        )
    )

    def one_pass() -> tuple[list[tuple[str, int]], int]:
        with FaultProxy(anvil_chain.rpc_url) as proxy:
            monkeypatch.setenv("TRACE_RPC_POOL_INTEG_URL", proxy.url)
            reports = list(incremental.scheduled_reports(rt))
            calls = proxy.methods["eth_getBlockByNumber"] + proxy.methods["eth_getBlockReceipts"]
        assert all(r.passed and r.rpc_checked for r in reports)
        done = sorted((r.dataset_key, x.range_start) for r in reports for x in r.ranges)
        return done, calls

    first, calls = one_pass()
    assert first == [("blocks", 0), ("blocks", 200), ("blocks", 400), ("logs", 0)]
    assert calls <= 1100
    second, calls = one_pass()  # the new ones left over; no room for a sample
    assert second == [("logs", 200), ("logs", 400), ("transactions", 0)] and calls <= 1100
    third, calls = one_pass()  # the last new ones, then the two stalest verified ranges
    assert third == [("blocks", 0), ("blocks", 200), ("transactions", 200), ("transactions", 400)]
    assert calls <= 1100
    with rt.state() as conn:
        assert conn.execute(
            "SELECT count(*) FILTER (WHERE verified_passed), count(*) FROM state.dataset_versions"
        ).fetchone() == (9, 9)

    # verify --all does everything on demand, whatever the schedule's budget
    result = CliRunner().invoke(cli, ["verify", "--all", "--json"])
    assert result.exit_code == 0, result.output
    assert sum(s["ranges_checked"] for s in json.loads(result.output)["streams"]) == 9
