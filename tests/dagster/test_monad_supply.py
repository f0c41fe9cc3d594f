"""Supply by block reconciles with Monad's rules end to end, on a Monad-shaped anvil chain
(``trace_lite.devtools.devmonad``): a reward minted by a system transaction in every block
(25 MON, 18 MON from a MIP-12-like block on), base fees burned on gas limits, staking events
of the precompile's ABI. Synced with real cryo through Dagster; the analytics sensor
materializes the roll-ups and their checks; a block whose mint differs is caught."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster import AssetCheckKey, DagsterEventType, DagsterInstance, instance_for_test

from tests.conftest import clone_databases, drop_databases
from trace_core.chain_sync import store
from trace_core.chain_sync.yamlload import load_job_file
from trace_core.db.migrate import migrate
from trace_core.rpc.client import hex_int
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_dagster.analytics import analytics_asset_key
from trace_dagster.definitions import build_definitions
from trace_dagster.driver import drive_until_idle
from trace_lite.devtools import devstaking
from trace_lite.devtools.devchain import DevChain
from trace_lite.devtools.devmonad import BASE_FEE_VAULT, MON, MonadShape

CHUNK = 100
MIP12 = 100  # the reward drops from 25 to 18 MON here
BROKEN = 220  # this block mints one wei short
SHAPE = MonadShape(reward_changes={MIP12: 18 * MON}, mint_overrides={BROKEN: 18 * MON - 1})
JOB = """kind: chain_sync
name: mon
chain_id: {chain_id}
mode: {{kind: fixed_target, from_block: 0, to_block: {to_block}}}
streams:
  geth_balance_diffs: {{cryo_dataset_name: geth_balance_diffs, rpc_pool: mon, chunk_size: {chunk}, max_inflight: 2}}
  blocks: {{cryo_dataset_name: blocks, rpc_pool: mon, chunk_size: {chunk}, max_inflight: 2}}
  transactions: {{cryo_dataset_name: transactions, rpc_pool: mon, chunk_size: {chunk}, max_inflight: 2}}
  logs: {{cryo_dataset_name: logs, rpc_pool: mon, chunk_size: {chunk}, max_inflight: 2}}
analytics:
  balance_diffs: geth_balance_diffs
  genesis: {{rpc_accounts: mon}}
  top_n: 3
  supply_window_blocks: 100
  staking: {{logs: logs, address: "0x0000000000000000000000000000000000001000", top_k: [1]}}
  supply: {supply}
"""
ENV = {"TRACE_RETRY_BASE_SECONDS": "0", "TRACE_HEARTBEAT_SECONDS": "1"}


def _apply(rt: Runtime, path: Path, chain: DevChain, to_block: int) -> None:
    supply = json.dumps(SHAPE.supply_spec("blocks", "transactions"))
    path.write_text(
        JOB.format(chain_id=chain.chain_id, to_block=to_block, chunk=CHUNK, supply=supply)
    )
    spec, raw = load_job_file(path)
    with rt.state() as conn:
        store.apply_job(conn, rt.settings.org_id, spec, raw, str(path))


def _checks(instance: DagsterInstance, name: str) -> list[dict[str, Any]]:
    """Details (plus ``passed``) of every evaluation of check ``name``, oldest first."""
    out = []
    for run in reversed(instance.get_runs()):
        for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
            data = entry.get_dagster_event().asset_check_evaluation_data
            if data.check_name == name:
                details: dict[str, Any] = data.metadata["details"].value  # type: ignore[assignment]
                out.append({**details, "passed": data.passed})
    return out


def _rewards(rt: Runtime, chain: DevChain) -> tuple[int, int]:
    """Count and sum of the ``validator_rewarded`` rows of ``analytics_staking_events``."""
    from trace_core.analytics import compute
    from trace_core.analytics.jobs import get_analytics_job

    with rt.state() as state, duckdb.connect() as con:
        ctx = compute.Context(rt.settings, rt.store, state)
        job = get_analytics_job(state, rt.settings.org_id, "mon")
        inp = compute.output_input(ctx, job, "staking_events", 0, 200)
        row = con.execute(
            f"SELECT count(*), CAST(sum(amount) AS VARCHAR) FROM ({inp.select_sql()}) "
            "WHERE event = 'validator_rewarded'"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1] or 0)


def test_supply_reconciles_on_a_monad_shaped_chain_and_a_short_mint_is_caught(
    pg_server_url: str, template_dbs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dbs = clone_databases(pg_server_url)
    with (
        DevChain.start(blocks=100, seed=3, archive=True, monad=SHAPE) as chain,
        instance_for_test() as instance,
    ):
        activity = devstaking.drive(chain, validators=3, actions=12)
        chain.seed(250, seed=5)
        for k, v in {
            **ENV,
            "TRACE_HOME": str(tmp_path / "home"),
            "TRACE_STATE_URL": dbs.state_url,
            "TRACE_DATA_URL": dbs.data_url,
            "TRACE_RPC_POOL_MON_URL": chain.rpc_url,
        }.items():
            monkeypatch.setenv(k, v)
        rt = Runtime(load_settings())
        try:
            migrate(rt.dbs)
            _apply(rt, tmp_path / "mon.yaml", chain, 200)
            defs = build_definitions(rt)
            report = drive_until_idle(rt, defs, instance, timeout=300)
            assert report.idle and report.dead_tasks == 0 and report.failed_runs == 0, report

            # [0, 200): every block explained by its reward minted and its base fees burned
            (ok,) = _checks(instance, "supply_reconciles")
            minted = sum(SHAPE.reward_at(b) for b in range(200))
            assert ok["passed"] and ok["unexplained_blocks"] == 0 and ok["blocks"] == 200, ok
            assert int(ok["minted"]) == minted == (99 * 25 + 100 * 18) * MON
            assert ok["charge"] == "gas_limit" and int(ok["burned"]) > 0
            # the ledger agrees with the chain: supply = sum of balances outside the vault,
            # which holds exactly the base fees the reconciliation says were burned
            vault = hex_int(chain.rpc.call("eth_getBalance", [BASE_FEE_VAULT, hex(199)]))
            assert vault == int(ok["burned"])
            for asset, check in (
                ("native_supply", "supply_matches_chain"),
                ("staking_concentration", "stake_is_consistent"),
            ):
                rec = instance.event_log_storage.get_latest_asset_check_execution_by_key(  # type: ignore[attr-defined]
                    [AssetCheckKey(analytics_asset_key("mon", asset), check)]
                )
                (execution,) = rec.values()
                assert execution.status.value == "SUCCEEDED", (asset, check)
            assert activity.last_block < 200
            # the reward's system transaction logs ValidatorRewarded once the stand-in is in
            rewarded = _rewards(rt, chain)
            after = range(activity.first_block, 200)
            assert rewarded == (len(after), sum(SHAPE.minted_at(b) for b in after))

            # [0, 250): block 220 minted one wei short of the protocol's 18 MON
            _apply(rt, tmp_path / "mon.yaml", chain, 250)
            report = drive_until_idle(rt, defs, instance, timeout=300)
            assert report.idle and report.dead_tasks == 0, report
            bad = _checks(instance, "supply_reconciles")[-1]
            assert not bad["passed"] and bad["blocks"] == 250, bad
            assert bad["unexplained_blocks"] == 1 and bad["first_unexplained"] == BROKEN
            observed, expected = (int(v) for v in bad["first_observed_expected"])
            assert expected - observed == 1
        finally:
            rt.close()
    drop_databases(pg_server_url, dbs)
