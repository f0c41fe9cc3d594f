"""The analytics assets as a table: what each computation reads, commits and checks.

Framework-free: ``trace_dagster.analytics`` builds one Dagster multi-asset per ``Computation``
from this table (and one asset job per ``kind``). A computation either runs per input range
(partitioned like its input stream, ``reads`` is None) or rolls up a per-range output whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import duckdb

from trace_core.analytics import balances, checks, compute, staking, supply
from trace_core.analytics.jobs import AnalyticsJob
from trace_core.analytics.plan import Kind

Checker = Callable[
    [compute.Context, duckdb.DuckDBPyConnection, AnalyticsJob, compute.Result],
    checks.CheckOutcome,
]


@dataclass(frozen=True)
class Check:
    """A check on ``asset`` after its computation; ``applies`` says whether a job gets it."""

    name: str
    asset: str
    description: str
    fn: Checker
    applies: Callable[[AnalyticsJob], bool] = lambda job: True


@dataclass(frozen=True)
class Computation:
    """One computation committing ``outputs`` (name, description) together.

    ``source``: the job's input it needs (``balances``: the balance-diffs stream, ``staking``:
    the staking logs stream). ``reads``: None for a per-range computation over that stream
    (``fn(ctx, con, job, start, end)``), else the per-range output a roll-up reads whole
    (``fn(ctx, con, job)``). ``op``: the definition name's suffix; ``kind``: the asset job (and
    the sensor's planned run kind, ``analytics.plan``) it belongs to.
    """

    op: str
    kind: Kind
    source: Literal["balances", "staking"]
    outputs: tuple[tuple[str, str], ...]
    fn: Callable[..., compute.Result]
    reads: str | None = None
    checks: tuple[Check, ...] = ()

    @property
    def partitioned(self) -> bool:
        return self.reads is None

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.outputs]


CATALOG: tuple[Computation, ...] = (
    Computation(
        "balance_range",
        "balance_range",
        "balances",
        (
            (
                "balance_changes",
                "per block and account: balance after the block and its net change"
                " (DECIMAL(38,0) wei)",
            ),
            ("supply_deltas", "per block: net native supply change, minted, burned"),
        ),
        compute.balance_range,
    ),
    Computation(
        "native_supply",
        "balance_rollups",
        "balances",
        (("native_supply", "native supply at every block of the window (genesis + changes)"),),
        supply.native_supply,
        reads="supply_deltas",
        checks=(
            Check(
                "supply_matches_chain",
                "native_supply",
                "sum of eth_getBalance over known accounts at sampled blocks",
                checks.supply_matches_chain,
            ),
            Check(
                "supply_reconciles",
                "native_supply",
                "each block's supply change = reward - base fee burned",
                checks.supply_reconciles,
                applies=lambda job: job.spec.supply is not None,
            ),
        ),
    ),
    Computation(
        "top_accounts",
        "balance_rollups",
        "balances",
        (
            ("top_accounts", "current top N accounts by native balance"),
            ("top_account_history", "each top account's balance at every synced range end"),
            (
                "account_balances",
                "every account's native balance at the synced end (the state new ranges fold into)",
            ),
        ),
        balances.top_accounts,
        reads="balance_changes",
        checks=(
            Check(
                "top_accounts_match_chain",
                "top_account_history",
                "eth_getBalance at sampled range ends",
                checks.top_accounts_match_chain,
            ),
        ),
    ),
    Computation(
        "staking_range",
        "staking_range",
        "staking",
        (("staking_events", "decoded staking precompile events (Delegate, Undelegate, ...)"),),
        compute.staking_range,
    ),
    Computation(
        "staking_concentration",
        "staking_rollups",
        "staking",
        (
            ("validator_stake", "per validator stake and delegator count over time"),
            ("staking_concentration", "HHI, Nakamoto coefficient and top-k share over time"),
            (
                "delegator_stake",
                "net stake per validator and delegator at the synced end (the state new ranges"
                " fold into)",
            ),
        ),
        staking.staking_concentration,
        reads="staking_events",
        checks=(
            Check(
                "stake_is_consistent",
                "staking_concentration",
                "totals agree and metrics are within bounds",
                checks.stake_is_consistent,
            ),
        ),
    ),
)


def source_stream(job: AnalyticsJob, source: str) -> str | None:
    """The job's stream key behind ``source`` (None: the job does not set it)."""
    if source == "balances":
        return job.spec.balance_diffs
    return job.spec.staking.logs if job.spec.staking is not None else None


def computations(job: AnalyticsJob) -> list[tuple[Computation, str]]:
    """The computations ``job`` runs, each with its source stream key, in catalog order."""
    out = []
    for c in CATALOG:
        stream = source_stream(job, c.source)
        if stream is not None:
            out.append((c, stream))
    return out


def kind_outputs(job: AnalyticsJob) -> dict[str, list[str]]:
    """Asset job kind -> the output names it materializes, for the kinds ``job`` runs."""
    out: dict[str, list[str]] = {}
    for c, _stream in computations(job):
        out.setdefault(c.kind, []).extend(c.names)
    return out
