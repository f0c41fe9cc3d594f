"""Checks of committed analytics outputs: internal consistency, and against the chain.

The chain checks ask ``eth_getBalance`` at a few sampled blocks (an archive node is needed
for old blocks). The supply check sums the balance of every account the data knows (the
genesis allocation plus every address with a balance change) and is skipped past
``MAX_CHECK_ACCOUNTS`` accounts (that sum is a dev-chain check, not a mainnet one): a skipped
check is ``skipped`` and not ``passed``, so the UI never shows it as a pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import duckdb

from trace_core.analytics.compute import Context, Result, output_input, ready, view
from trace_core.analytics.genesis import load_genesis
from trace_core.analytics.inputs import stream_input
from trace_core.analytics.jobs import AnalyticsJob
from trace_core.analytics.output import output_key
from trace_core.db.queries import q
from trace_core.errors import ConfigError, DatasetNotSynced
from trace_core.rpc.client import RpcClient, hex_int
from trace_core.settings import rpc_pool_env_var, rpc_pool_url

MAX_CHECK_ACCOUNTS = 2000
SAMPLES = 3


@dataclass(frozen=True)
class CheckOutcome:
    """A check's verdict with what it compared (JSON-ready metadata)."""

    name: str
    passed: bool
    description: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    skipped: bool = False  # nothing was compared: never reported as passed


def _rpc(ctx: Context, job: AnalyticsJob, stream: str) -> RpcClient:
    pool = job.pools.get(stream)
    url = rpc_pool_url(pool, ctx.environ) if pool else None
    if url is None:
        raise ConfigError(
            f"job {job.job!r}: the chain checks need stream {stream!r}'s RPC pool URL",
            field=rpc_pool_env_var(pool) if pool else f"streams.{stream}.rpc_pool",
        )
    return RpcClient(url, label=f"pool {pool}", timeout=ctx.settings.rpc_timeout_seconds)


def _samples(lo: int, hi: int, n: int = SAMPLES) -> list[int]:
    """``n`` blocks spread over ``[lo, hi)``, first and last included."""
    if hi - lo <= n:
        return list(range(lo, hi))
    return sorted({lo + (hi - 1 - lo) * i // (n - 1) for i in range(n)})


def _balances(rpc: RpcClient, accounts: list[str], block: int) -> dict[str, int]:
    replies = rpc.batch([("eth_getBalance", [a, hex(block)]) for a in accounts])
    return {a: hex_int(r) for a, r in zip(accounts, replies, strict=True)}


def supply_matches_chain(
    ctx: Context, con: duckdb.DuckDBPyConnection, job: AnalyticsJob, result: Result
) -> CheckOutcome:
    """Supply at sampled blocks equals the sum of ``eth_getBalance`` over all known accounts."""
    stream = job.require_balances()
    lo, hi = result.start, result.end
    inp = output_input(ctx, job, "balance_changes", 0, hi)
    ready(ctx, con, inp)
    view(con, "balance_changes", inp.select_sql())
    alloc = load_genesis(job, ctx.settings, ctx.environ)
    supply_inp = output_input(ctx, job, "native_supply", 0, hi)
    view(con, "native_supply", supply_inp.select_sql())
    compared: dict[str, Any] = {}
    with _rpc(ctx, job, stream) as rpc:
        for block in _samples(lo, hi):
            seen = con.execute(
                "SELECT DISTINCT address FROM balance_changes WHERE block_number <= $b",
                {"b": block},
            ).fetchall()
            accounts = sorted((set(alloc) | {r[0] for r in seen}) - set(job.burn_addresses))
            if len(accounts) > MAX_CHECK_ACCOUNTS:
                return CheckOutcome(
                    "supply_matches_chain",
                    False,
                    f"skipped: {len(accounts)} accounts exceed {MAX_CHECK_ACCOUNTS}",
                    {"skipped": True, "accounts": len(accounts)},
                    skipped=True,
                )
            chain_sum = sum(_balances(rpc, accounts, block).values())
            row = con.execute(
                "SELECT CAST(supply AS VARCHAR) FROM native_supply WHERE block_number = $b",
                {"b": block},
            ).fetchone()
            ours = int(row[0]) if row else None
            compared[str(block)] = {"supply": str(ours), "eth_getBalance_sum": str(chain_sum)}
    passed = all(v["supply"] == v["eth_getBalance_sum"] for v in compared.values())
    return CheckOutcome(
        "supply_matches_chain",
        passed,
        "supply equals the sum of eth_getBalance over every known account at sampled blocks",
        {"blocks": compared},
    )


def supply_reconciles(
    ctx: Context, con: duckdb.DuckDBPyConnection, job: AnalyticsJob, result: Result
) -> CheckOutcome:
    """Every block of ``[0, end)``: the net supply change from the balance diffs equals the
    protocol's: the block reward in force minted (none at genesis), minus ``base_fee_per_gas``
    times the gas charged burned (the block's ``gas_used``, or with ``supply.transactions`` the
    sum of each non-system transaction's ``supply.charge``). Ledger data only, no old state:
    it works where ``eth_getBalance`` at old blocks does not (Monad). Skipped (and says so)
    without a ``supply:`` block or while its streams are not synced that far."""
    name = "supply_reconciles"
    spec = job.spec.supply
    end = result.end
    if spec is None:
        why = "skipped: the job's analytics block sets no supply: {blocks: <stream>}"
        return CheckOutcome(name, False, why, {"skipped": True}, skipped=True)
    inputs = {}
    try:
        for view_name, stream in (
            ("chain_blocks", spec.blocks),
            ("chain_transactions", spec.transactions),
        ):
            if stream is not None:
                inputs[view_name] = stream_input(
                    ctx.state,
                    ctx.store,
                    org_id=ctx.org_id,
                    job=job.job,
                    stream=stream,
                    chain_id=job.chain_id,
                    start=0,
                    end=end,
                )
    except DatasetNotSynced as exc:
        return CheckOutcome(name, False, f"skipped: {exc.message}", {"skipped": True}, skipped=True)
    deltas = output_input(ctx, job, "supply_deltas", 0, end)
    ready(ctx, con, *inputs.values(), deltas)
    for view_name, inp in inputs.items():
        view(con, view_name, inp.select_sql())
    view(con, "supply_deltas", deltas.select_sql())
    if spec.transactions is None:
        view(con, "charged_gas", q("analytics_duckdb", "charged_gas_blocks"))
    else:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE charged_gas AS "
            + q("analytics_duckdb", "charged_gas_transactions"),
            {"charge": spec.charge, "system": spec.system_address[2:]},
        )
    steps = spec.reward_schedule()
    con.execute(
        "CREATE OR REPLACE TEMP TABLE reward_schedule AS SELECT CAST(b AS BIGINT) AS from_block, "
        "CAST(CAST(w AS HUGEINT) AS DECIMAL(38,0)) AS wei FROM (SELECT unnest($b) AS b, "
        "unnest($w) AS w)",
        {"b": [b for b, _ in steps], "w": [str(w) for _, w in steps]},
    )
    row = con.execute(q("analytics_duckdb", "supply_reconcile")).fetchone()
    assert row is not None
    checked, unexplained, first, minted, burned, first_pair = row
    return CheckOutcome(
        name,
        unexplained == 0 and checked == end,
        f"{unexplained} of {checked} blocks unexplained (supply change != reward minted - "
        "base fee burned)",
        {
            "blocks": checked,
            "unexplained_blocks": unexplained,
            "first_unexplained": first,
            "first_observed_expected": first_pair,
            "minted": minted,
            "burned": burned,
            "charge": spec.charge if spec.transactions else "block gas_used",
        },
    )


def top_accounts_match_chain(
    ctx: Context, con: duckdb.DuckDBPyConnection, job: AnalyticsJob, result: Result
) -> CheckOutcome:
    """Each top account's balance (now and at sampled history points) equals eth_getBalance."""
    stream = job.require_balances()
    hist = output_input(ctx, job, "top_account_history", 0, result.end)
    ready(ctx, con, hist)
    view(con, "top_account_history", hist.select_sql())
    points = [
        r[0]
        for r in con.execute(
            "SELECT DISTINCT block_number FROM top_account_history ORDER BY 1"
        ).fetchall()
    ]
    picked = [points[i] for i in _samples(0, len(points))] if points else []
    mismatches: list[str] = []
    checked = 0
    with _rpc(ctx, job, stream) as rpc:
        for block in picked:
            rows = con.execute(
                "SELECT address, CAST(balance AS VARCHAR) FROM top_account_history "
                "WHERE block_number = $b",
                {"b": block},
            ).fetchall()
            chain = _balances(rpc, [a for a, _ in rows], int(block))
            for address, balance in rows:
                checked += 1
                if chain[address] != int(balance):
                    mismatches.append(f"{address}@{block}: {balance} != {chain[address]}")
    return CheckOutcome(
        "top_accounts_match_chain",
        not mismatches and checked > 0,
        "top accounts' balances equal eth_getBalance at sampled range ends",
        {"checked": checked, "mismatches": mismatches[:10], "blocks": [int(b) for b in picked]},
    )


def stake_is_consistent(
    ctx: Context, con: duckdb.DuckDBPyConnection, job: AnalyticsJob, result: Result
) -> CheckOutcome:
    """At the last point, total stake equals the sum of validator stakes, and every metric is
    within its bounds (1/n <= HHI <= 1, 1 <= Nakamoto <= n)."""
    latest = result.summary.get("latest") or {}
    validators: Mapping[int, int] = result.summary.get("validators") or {}
    total = int(latest.get("total_stake", 0))
    n = int(latest.get("validators", 0))
    ok = total == sum(validators.values()) and n == len([s for s in validators.values() if s])
    if n:
        hhi = Decimal(latest["hhi"])
        lowest = Decimal(1) / Decimal(n) - Decimal("1e-18")  # HHI is rounded to 18 places
        ok = ok and lowest <= hhi <= 1 and 1 <= latest["nakamoto_coefficient"] <= n
    return CheckOutcome(
        "stake_is_consistent",
        ok,
        "total stake = sum of validator stakes; metrics within bounds",
        {"total_stake": str(total), "validators": n, "dataset": output_key("validator_stake")},
    )
