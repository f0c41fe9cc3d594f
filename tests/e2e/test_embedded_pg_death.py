"""The embedded Postgres dies while ``trace-lite run --until-idle`` syncs: the run stops within
seconds with one clear line (not a minute of sensor failures and stack frames), and a rerun
once Postgres is back finishes the job exactly. Real CLI process, real embedded Postgres
(SIGKILLed postmaster), real cryo against the session anvil chain."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.e2e.test_faults import CLI, cli_env, succeeded, wait_for
from trace_core.chain_sync import store
from trace_core.chain_sync.yamlload import parse_job
from trace_core.datasets import registry
from trace_core.db.embedded import stop_embedded
from trace_core.db.migrate import migrate
from trace_core.runtime import Runtime
from trace_core.settings import Settings
from trace_lite.devtools.devchain import DevChain

JOB = """kind: chain_sync
name: pgdeath
chain_id: {chain_id}
mode: {{kind: fixed_target, from_block: 0, to_block: 1500}}
streams:
  blocks: {{cryo_dataset_name: blocks, rpc_pool: pgdeath, chunk_size: 100, max_inflight: 1}}
"""


def _postmaster_pid(home: Path) -> int:
    return int((home / "pg" / "postmaster.pid").read_text().splitlines()[0])


def test_embedded_postgres_dying_mid_run_stops_the_run_at_once(
    anvil_chain: DevChain, tmp_path: Path
) -> None:
    # not under pytest's basetemp (0700: the server's own user could not enter it; conftest.py)
    home = Path(tempfile.mkdtemp(prefix="trace-pgdeath-"))
    env = {k: v for k, v in cli_env({}).items() if not k.startswith(("TRACE_", "DAGSTER_"))}
    env |= {k: v for k, v in cli_env({}).items() if k.startswith("TRACE_") and "URL" not in k}
    env |= {
        "TRACE_HOME": str(home),
        "TRACE_RPC_POOL_PGDEATH_URL": anvil_chain.rpc_url,
        "DAGSTER_HOME": str(tmp_path / "dagster"),
    }
    (tmp_path / "dagster").mkdir()
    rt = Runtime(Settings(home=home))  # the embedded server under home, left running
    try:
        migrate(rt.dbs)
        spec, raw = parse_job(JOB.format(chain_id=anvil_chain.chain_id), source="pgdeath.yaml")
        with rt.state() as conn:
            store.apply_job(conn, rt.settings.org_id, spec, raw, "pgdeath.yaml")
        log_path = tmp_path / "run.log"
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                [CLI, "run", "--until-idle"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            wait_for("2 ranges committed", lambda: succeeded(rt) >= 2)
            rt.close()
            before = len(log_path.read_text().splitlines())
            os.kill(_postmaster_pid(home), signal.SIGKILL)
            killed = time.monotonic()
            code = proc.wait(timeout=60)
            took = time.monotonic() - killed
        finally:
            if proc.poll() is None:
                proc.kill()
        after = log_path.read_text().splitlines()[before:]
        assert code != 0
        errors = [i for i, line in enumerate(after) if line.startswith("error:")]
        assert errors, "\n".join(after)
        last = " ".join(" ".join(after[errors[-1] :]).split())  # rich wraps at 80 columns
        assert "the embedded Postgres in" in last and "stopped" in last
        assert "Traceback" not in "\n".join(after) and '  File "' not in "\n".join(after)
        assert len(after) <= 20, "\n".join(after)  # a few lines (the run's events), not hundreds
        assert took < 30, took  # seconds, not a minute of retries

        # Postgres back (the rerun starts it): the rerun finishes the job, every range once
        rerun = subprocess.run(
            [CLI, "run", "--until-idle"], env=env, capture_output=True, text=True, timeout=300
        )
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        rt = Runtime(Settings(home=home))
        with rt.state() as conn:
            versions = registry.versions_for_stream(
                conn, rt.settings.org_id, anvil_chain.chain_id, "blocks"
            )
        assert sorted((v.range_start, v.range_end) for v in versions) == [
            (s, s + 100) for s in range(0, 1500, 100)
        ]
    finally:
        rt.close()
        stop_embedded(home)
        shutil.rmtree(home, ignore_errors=True)
