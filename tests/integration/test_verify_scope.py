"""A scoped verify (``--range``, and the scheduled pass, which verifies a window of ranges at a
time) still checks the parent-hash link into the range below: it loads the neighbouring
ranges. Real cryo against the session anvil chain, real Postgres, Parquet in a LocalStore."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.integration.test_integrity import _parquet, _path, _version, run_until_idle
from trace_core.chain_sync import store
from trace_core.chain_sync.yamlload import load_job_file
from trace_core.db.migrate import migrate
from trace_core.integrity import incremental, verify
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_lite.devtools.devchain import DevChain

JOB = """kind: chain_sync
name: scope
chain_id: {chain_id}
mode: {{kind: fixed_target, from_block: 0, to_block: 600}}
streams:
  blocks: {{cryo_dataset_name: blocks, rpc_pool: scope, chunk_size: 200, max_inflight: 3}}
"""


def test_a_scoped_verify_checks_the_hash_link_into_the_range_below(
    trace_env: Runtime, anvil_chain: DevChain, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRACE_RPC_POOL_SCOPE_URL", anvil_chain.rpc_url)
    rt = Runtime(load_settings())
    migrate(rt.dbs)
    job_file = tmp_path / "scope.yaml"
    job_file.write_text(JOB.format(chain_id=anvil_chain.chain_id))
    spec, raw = load_job_file(job_file)
    with rt.state() as conn:
        store.apply_job(conn, rt.settings.org_id, spec, raw, str(job_file))
    assert run_until_idle(rt) == 3

    # block 199 (last of the range below) is stored with a wrong hash: its file and manifest
    # stay consistent, so only the parent-hash link of block 200 (the next range) shows it
    rec = _version(rt, "blocks", 0)
    key = _parquet(rt, rec)
    table = pq.read_table(_path(rt, key))
    last = pc.equal(table.column("block_number"), 199)
    column = table.schema.get_field_index("block_hash")
    bogus = pa.scalar(b"\x01" * 32, table.schema.field(column).type)
    table = table.set_column(
        column, "block_hash", pc.if_else(last, bogus, table.column("block_hash"))
    )
    pq.write_table(table, _path(rt, key))
    data = _path(rt, key).read_bytes()
    manifest = json.loads(rt.store.get_bytes(rec.manifest_key))
    manifest["files"][0].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    rt.store.put_bytes(rec.manifest_key, json.dumps(manifest, sort_keys=True).encode())
    with rt.state() as conn:
        conn.execute(
            "UPDATE state.dataset_versions SET bytes = %s WHERE dataset_version = %s",
            (len(data), rec.dataset_version),
        )

    # --range over the middle range only: its own blocks match the chain, its link does not
    (report,) = verify.verify(rt, job="scope", stream="blocks", block_range=(200, 400))
    assert [(f.kind, f.range_start) for f in report.findings] == [("parent_hash", 200)], [
        f.line() for f in report.findings
    ]

    # the scheduled pass, one range per window: the window over [200, 400) finds it too
    one = Runtime(rt.settings.model_copy(update={"integrity_ranges_per_tick": 1}))
    found = [
        (f.kind, f.range_start)
        for step in incremental.scheduled_reports(one)
        for f in step.findings
        if f.kind == "parent_hash"
    ]
    assert ("parent_hash", 200) in found  # the range below reports its side of the link too
