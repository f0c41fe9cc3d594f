"""``trace-lite demo --analytics``: the Monad demos 2-4 on a local chain.

The chain is a Monad-shaped archive anvil (``trace_lite.devtools.devmonad``: a reward minted
by a system transaction every block, 25 MON then 18 MON from block ``MIP12_BLOCK``, base fees
out of supply, gas charged on limits; geth_balance_diffs traces old blocks) with staking events
at Monad's precompile address from ``trace_lite.devtools.devstaking``; the job is
``examples/chain_sync.demo_analytics.yaml``. After the backfill, the ``trace_analytics``
sensor materializes the analytics assets under ``dagster dev``; this waits for the roll-ups to
be committed, then prints the supply series (checked against ``eth_getBalance``), the
``supply_reconciles`` check's verdict as the Dagster UI shows it (each block's supply change
against reward minted - base fee burned), the top-N table and the concentration metrics, all
read through the Query Service.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from trace_core.datasets.registry import versions_for_stream
from trace_core.errors import TraceError
from trace_core.rpc.client import hex_int
from trace_core.runtime import Runtime
from trace_core.settings import REPO_ROOT, Settings
from trace_lite.devtools import devstaking
from trace_lite.devtools.devchain import DevChain
from trace_lite.devtools.devmonad import BASE_FEE_VAULT, MON, MonadShape
from trace_lite.render import print_response

DEMO_ANALYTICS_FILE = REPO_ROOT / "examples" / "chain_sync.demo_analytics.yaml"
DEMO_JOB = "demo_analytics"  # the job's name in DEMO_ANALYTICS_FILE: outputs are per job
MIP12_BLOCK = 1000  # the demo chain's reward drops from 25 to 18 MON here (as in the YAML)
DEMO_SHAPE = MonadShape(reward_changes={MIP12_BLOCK: 18 * MON})
ROLLUPS = ("analytics_native_supply", "analytics_top_accounts", "analytics_staking_concentration")

SUPPLY_SQL = """
SELECT block_number, supply, supply_delta FROM analytics_native_supply
WHERE block_number % 100 = 99 OR supply_delta <> 0 ORDER BY block_number DESC LIMIT 8
"""
TOP_SQL = (
    "SELECT rank, address, balance, last_changed_block FROM analytics_top_accounts ORDER BY rank"
)
HISTORY_SQL = """
SELECT address,
       string_agg(CAST(balance AS VARCHAR), ' -> ' ORDER BY block_number) AS balance_at_range_ends
FROM analytics_top_account_history GROUP BY address, rank ORDER BY rank
"""
CONCENTRATION_SQL = "SELECT * FROM analytics_staking_concentration ORDER BY block_number"
VALIDATORS_SQL = """
SELECT validator_id, stake, delegators FROM analytics_validator_stake
WHERE block_number = (SELECT max(block_number) FROM analytics_validator_stake)
ORDER BY stake DESC
"""


def start_chain(console: Console, blocks: int, seed: int, genesis: int) -> DevChain:
    """An archive anvil with staking activity, then transfers up to ``blocks`` blocks."""
    with console.status(f"mining a local archive anvil chain ({blocks} blocks, staking events)..."):
        chain = DevChain.start(
            3, seed, chain_id=31337, archive=True, genesis_timestamp=genesis, monad=DEMO_SHAPE
        )
        try:
            activity = devstaking.drive(
                chain, seed=seed, validators=5, actions=40, max_gap_blocks=40
            )
            chain.seed(blocks, seed)
        except BaseException:
            chain.stop()
            raise
    console.print(
        f"staking stand-in at {activity.address}: {len(activity.events)} events in blocks "
        f"{activity.first_block}-{activity.last_block}"
    )
    return chain


def wait_for_rollups(rt: Runtime, chain_id: int, to_block: int, deadline: float) -> None:
    """Poll the registry until every roll-up of the demo job covers ``[0, to_block)``."""
    from trace_core.chain_sync.analytics_spec import job_dataset_key

    while True:
        with rt.state() as conn:
            done = all(
                any(
                    v.range_end >= to_block
                    for v in versions_for_stream(
                        conn, rt.settings.org_id, chain_id, job_dataset_key(DEMO_JOB, k)
                    )
                )
                for k in ROLLUPS
            )
        if done:
            return
        if time.monotonic() > deadline:
            raise TraceError(
                "the analytics did not finish in time; see the trace_analytics sensor and the "
                "analytics runs in the Dagster UI"
            )
        time.sleep(1.0)


def show(
    console: Console,
    settings: Settings,
    rt: Runtime,
    chain: DevChain | None,
    chain_id: int,
    to_block: int,
    deadline: float,
) -> dict[str, Any]:
    """Print the three demos; return the responses (and the chain's supply) for tests."""
    from trace_core.query.client import query_http

    with console.status("waiting for the analytics assets (trace_analytics sensor)..."):
        wait_for_rollups(rt, chain_id, to_block, deadline)
    out: dict[str, Any] = {}
    for key, title, sql in (
        ("supply", "Demo 2: native supply by block (wei; window of the last blocks)", SUPPLY_SQL),
        ("top", "Demo 3: top accounts now", TOP_SQL),
        ("history", "Demo 3: their balances at each synced range end", HISTORY_SQL),
        ("validators", "Demo 4: stake per validator (latest)", VALIDATORS_SQL),
        ("concentration", "Demo 4: staking concentration over time", CONCENTRATION_SQL),
    ):
        out[key] = query_http(settings, sql, DEMO_JOB)
        print_response(console, title, out[key])
    if chain is not None:
        last = to_block - 1
        supply = next(int(r[1]) for r in out["supply"]["rows"] if int(r[0]) == last)
        accounts = query_http(
            settings,
            "SELECT DISTINCT address FROM analytics_balance_changes",
            DEMO_JOB,
            max_rows=100_000,
        )["rows"]
        known = {a[0] for a in accounts} | {a.lower() for a in chain.rpc.call("eth_accounts")}
        known.discard(BASE_FEE_VAULT)  # base fees: out of supply (burned, on Monad)
        replies = chain.rpc.batch([("eth_getBalance", [a, hex(last)]) for a in sorted(known)])
        chain_sum = sum(hex_int(r) for r in replies)
        out["chain_supply"] = chain_sum
        verdict = "[green]matches[/green]" if chain_sum == supply else "[red]differs from[/red]"
        console.print(
            f"supply at block {last}: {supply} wei {verdict} the sum of eth_getBalance over "
            f"{len(known)} accounts ({chain_sum})"
        )
    return out


CHECK_EXECUTIONS = """
query ($key: AssetKeyInput!, $check: String!) {
  assetCheckExecutions(assetKey: $key, checkName: $check, limit: 1) {
    status evaluation { success description }
  }
}
"""


def show_reconciliation(
    console: Console, dagster_url: str, to_block: int, deadline: float
) -> dict[str, Any]:
    """Wait for the ``supply_reconciles`` check's evaluation over ``[0, to_block)`` and print
    it as the Dagster UI's check page lists it; return the evaluation."""
    import httpx

    from trace_lite.reload import graphql

    key = {"path": ["analytics", DEMO_JOB, "native_supply"]}
    with (
        console.status("waiting for the supply_reconciles check..."),
        httpx.Client(timeout=30) as client,
    ):
        while True:
            data = graphql(
                client, dagster_url, CHECK_EXECUTIONS, key=key, check="supply_reconciles"
            )
            executions = data.get("assetCheckExecutions") or []
            evaluation = (executions[0].get("evaluation") or {}) if executions else {}
            if f" of {to_block} blocks unexplained" in (evaluation.get("description") or ""):
                break
            if time.monotonic() > deadline:
                raise TraceError("the supply_reconciles check was not evaluated in time")
            time.sleep(1.0)
    verdict = "[green]passed[/green]" if evaluation["success"] else "[red]failed[/red]"
    console.print(
        f"Dagster check supply_reconciles {verdict}: {evaluation['description']} (reward 25 MON, "
        f"18 MON from block {MIP12_BLOCK}; base fee charged on gas limits, burned)"
    )
    return dict(evaluation)
