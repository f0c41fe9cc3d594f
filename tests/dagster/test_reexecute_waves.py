"""Re-executing a failed continuing ``trace_worker`` run revives every task it touched.

A continuing run executes its batch, then takes the waves its commits free. A range that dies
in a later wave is not in the run's config (which holds the first batch only); re-executing the
run from the UI must still revive and run it, not go green while the range stays dead.

Real cryo against the session anvil chain, behind the loopback RPC proxy that fails every
block past 100 until the test lets them through (the RPC "comes back").
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    JobDefinition,
    ReexecutionOptions,
    RunsFilter,
    build_reconstructable_job,
    execute_job,
)

from trace_core.chain_sync import store
from trace_core.chain_sync.yamlload import load_job_file
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_dagster.definitions import build_definitions
from trace_dagster.driver import drive_until_idle
from trace_lite.devtools.devchain import DevChain
from trace_lite.devtools.rpcproxy import Exchange, ProxyHook, Reply, RpcProxy, error_reply

JOB = """kind: chain_sync
name: waves
chain_id: {chain_id}
max_attempts: 1
mode: {{kind: fixed_target, from_block: 0, to_block: 200}}
streams:
  blocks: {{cryo_dataset_name: blocks, rpc_pool: waves, chunk_size: 100, max_inflight: 1}}
"""


class FailPastBlock100(ProxyHook):
    """Answers every ``eth_getBlockByNumber`` for block >= 100 with an error while ``failing``."""

    def __init__(self) -> None:
        self.failing = True

    async def before(self, exchange: Exchange) -> Reply | None:
        for call in exchange.calls:
            params = call.get("params") or []
            if (
                self.failing
                and call.get("method") == "eth_getBlockByNumber"
                and params
                and isinstance(params[0], str)
                and params[0].startswith("0x")
                and int(params[0], 16) >= 100
            ):
                return error_reply(exchange, "block unavailable")
        return None


def worker_job() -> JobDefinition:
    return build_definitions().resolve_job_def("trace_worker")


def _ranges(rt: Runtime) -> dict[int, tuple[uuid.UUID, str]]:
    with rt.state() as conn:
        job_id = store.resolve_job(conn, rt.settings.org_id, "waves")
        return {r.range_start: (r.task_id, r.status) for r in store.list_ranges(conn, job_id)}


def test_reexecuting_a_continuing_run_revives_a_range_that_died_in_a_later_wave(
    trace_env: Runtime,
    dagster_instance: DagsterInstance,
    anvil_chain: DevChain,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    hook = FailPastBlock100()
    with RpcProxy(anvil_chain.rpc_url, hook=hook) as proxy:
        monkeypatch.setenv("TRACE_RPC_POOL_WAVES_URL", proxy.url)
        rt = Runtime(load_settings())
        job_file = tmp_path / "waves.yaml"
        job_file.write_text(JOB.format(chain_id=anvil_chain.chain_id))
        spec, raw = load_job_file(job_file)
        with rt.state() as conn:
            store.apply_job(conn, rt.settings.org_id, spec, raw, str(job_file))

        # one run: [0, 100) commits, the run continues with [100, 200), which dies
        report = drive_until_idle(rt, build_definitions(rt), dagster_instance, timeout=120)
        assert report.idle and report.runs == 1 and report.dead_tasks == 1
        ranges = _ranges(rt)
        assert {k: s for k, (_, s) in ranges.items()} == {0: "completed", 100: "dead"}
        (failed,) = dagster_instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
        # the run's config names only its first batch: the dead range came in a later wave
        assert json.dumps(failed.run_config).count(str(ranges[100][0])) == 0

        hook.failing = False  # the RPC is back; the person re-executes the failed run
        reexec = execute_job(
            build_reconstructable_job(__name__, "worker_job"),
            instance=dagster_instance,
            run_config=failed.run_config,
            reexecution_options=ReexecutionOptions.from_failure(failed.run_id, dagster_instance),
        )
        assert reexec.success
        assert {k: s for k, (_, s) in _ranges(rt).items()} == {0: "completed", 100: "completed"}
        with rt.state() as conn:
            revived = conn.execute(
                "SELECT task_id, source FROM state.task_revivals ORDER BY task_id"
            ).fetchall()
        assert revived == [(ranges[100][0], "dagster_reexecution")]
