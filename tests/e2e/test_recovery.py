"""Recovery within one lease: ``trace-lite run --until-idle`` is SIGKILLed mid-batch, while
real cryo is extracting a range from an anvil chain; a fresh run re-claims every stranded task within
``TRACE_LEASE_SECONDS`` (plus a tick and a process start) and the data ends exact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trace_core.datasets import registry
from trace_core.runtime import Runtime
from trace_lite.devtools.devchain import DevChain

LEASE_SECONDS = 10
# a tick of the driver, the fresh process importing Dagster, and a loaded 2-core box
RESUME_SLACK_SECONDS = 20
END = 1200
JOB = """kind: chain_sync
name: rec
chain_id: {chain_id}
mode: {{kind: fixed_target, from_block: 0, to_block: {end}}}
streams:
  blocks: {{cryo_dataset_name: blocks, rpc_pool: rec, chunk_size: 100, max_inflight: 24}}
  transactions: {{cryo_dataset_name: transactions, rpc_pool: rec, chunk_size: 100, max_inflight: 24}}
  logs: {{cryo_dataset_name: logs, rpc_pool: rec, chunk_size: 100, max_inflight: 24}}
"""


def _tasks(rt: Runtime) -> dict[str, tuple[str, int]]:
    with rt.state() as conn:
        rows = conn.execute("SELECT task_id, status, attempt FROM state.tasks").fetchall()
    return {str(r[0]): (r[1], r[2]) for r in rows}


def _inside_cryo(rt: Runtime) -> bool:
    """A running attempt whose staging directory holds cryo's output in progress."""
    staging = rt.settings.resolved_staging_dir()
    for task_id, (status, attempt) in _tasks(rt).items():
        out = staging / task_id / str(attempt)
        if status == "running" and out.is_dir() and any(out.iterdir()):
            return True
    return False


def _wait(what: str, done: object, timeout: float, proc: subprocess.Popen[bytes]) -> float:
    start = time.monotonic()
    while not done():  # type: ignore[operator]
        assert proc.poll() is None, f"trace-lite exited ({proc.returncode}) before {what}"
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)
    return time.monotonic() - start


@pytest.mark.timeout(600)
def test_sigkilled_run_resumes_within_one_lease_and_data_is_exact(
    trace_env: Runtime, anvil_chain: DevChain, tmp_path: Path
) -> None:
    rt = trace_env
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_")}
    env |= {
        "TRACE_LEASE_SECONDS": str(LEASE_SECONDS),
        "TRACE_HEARTBEAT_SECONDS": "1",
        "TRACE_RPC_POOL_REC_URL": anvil_chain.rpc_url,
        "DAGSTER_HOME": str(tmp_path / "dagster"),
    }
    (tmp_path / "dagster").mkdir()
    job = tmp_path / "rec.yaml"
    job.write_text(JOB.format(chain_id=anvil_chain.chain_id, end=END))
    cli = str(Path(sys.executable).parent / "trace-lite")
    applied = subprocess.run([cli, "apply", "--file", str(job)], env=env, capture_output=True)
    assert applied.returncode == 0, applied.stderr
    log = (tmp_path / "run.log").open("wb")
    argv = [cli, "run", "--until-idle", "--timeout", "400"]

    first = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(
            "4 ranges committed while cryo extracts others",
            lambda: sum(s == "succeeded" for s, _ in _tasks(rt).values()) >= 4 and _inside_cryo(rt),
            300,
            first,
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    killed_at = time.monotonic()
    at_kill = _tasks(rt)
    stranded = {t: a for t, (s, a) in at_kill.items() if s == "running"}
    assert stranded and len(at_kill) == 3 * END // 100

    second = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(
            "every stranded task re-claimed",
            lambda: all(
                _tasks(rt)[t][1] > attempt or _tasks(rt)[t][0] == "succeeded"
                for t, attempt in stranded.items()
            ),
            LEASE_SECONDS + RESUME_SLACK_SECONDS + 60,
            second,
        )
        resumed_after = time.monotonic() - killed_at
        assert second.wait(timeout=400) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if second.poll() is None:
            second.kill()
    print(f"resumed {len(stranded)} stranded task(s) {resumed_after:.1f} s after the kill")
    assert resumed_after <= LEASE_SECONDS + RESUME_SLACK_SECONDS, resumed_after

    # exact: every range succeeded once, one version per range, rows equal the chain's
    final = _tasks(rt)
    assert {s for s, _ in final.values()} == {"succeeded"}
    counts = {
        "blocks": anvil_chain.count_blocks(0, END),
        "transactions": anvil_chain.count_transactions(0, END),
        "logs": anvil_chain.count_logs(0, END),
    }
    with rt.state() as conn:
        for dataset, expected in counts.items():
            versions = registry.versions_for_stream(
                conn, rt.settings.org_id, anvil_chain.chain_id, dataset
            )
            assert sorted(v.range_start for v in versions) == list(range(0, END, 100)), dataset
            assert sum(v.row_count for v in versions) == expected, dataset
