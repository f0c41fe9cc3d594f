"""The analytics asset groups as a table: what each computes, from what, with which checks.

One row per unit of work the shell materializes together (a Dagster multi-asset): its outputs
(committed as ``analytics_<name>`` datasets), its inputs (the family's chain_sync stream or
other outputs), whether it is partitioned by that stream's block ranges, the compute function
and the checks run on its result. ``trace_dagster.analytics`` builds every asset from this
table; ``KIND_OUTPUTS`` is what each planned kind (``analytics.plan``) materializes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from trace_core.analytics import checks, compute
from trace_core.analytics.jobs import AnalyticsJob
from trace_core.analytics.plan import Kind

Family = Literal["balance", "staking"]
Compute = Callable[..., compute.Result]
Checker = Callable[[compute.Context, Any, AnalyticsJob, compute.Result], checks.CheckOutcome]


@dataclass(frozen=True)
class Check:
    name: str
    asset: str  # the output it checks
    description: str
    fn: Checker


@dataclass(frozen=True)
class AssetGroup:
    op: str  # the multi-asset's name suffix
    kind: Kind
    family: Family
    outputs: tuple[tuple[str, str], ...]  # (name, description)
    compute: Compute
    inputs: tuple[str, ...] = ()  # outputs it reads; empty: the family's stream
    partitioned: bool = False  # by the family stream's block ranges
    checks: tuple[Check, ...] = ()

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.outputs]


ASSET_GROUPS: tuple[AssetGroup, ...] = (
    AssetGroup(
        op="balance_range",
        kind="balance_range",
        family="balance",
        outputs=(
            (
                "balance_changes",
                "per block and account: balance after the block and its net change (DECIMAL(38,0) wei)",
            ),
            ("supply_deltas", "per block: net native supply change, minted, burned"),
        ),
        compute=compute.balance_range,
        partitioned=True,
    ),
    AssetGroup(
        op="native_supply",
        kind="balance_rollups",
        family="balance",
        outputs=(
            ("native_supply", "native supply at every block of the window (genesis + changes)"),
        ),
        compute=compute.native_supply,
        inputs=("supply_deltas",),
        checks=(
            Check(
                "supply_matches_chain",
                "native_supply",
                "sum of eth_getBalance over known accounts at sampled blocks",
                checks.supply_matches_chain,
            ),
        ),
    ),
    AssetGroup(
        op="top_accounts",
        kind="balance_rollups",
        family="balance",
        outputs=(
            ("top_accounts", "current top N accounts by native balance"),
            ("top_account_history", "each top account's balance at every synced range end"),
        ),
        compute=compute.top_accounts,
        inputs=("balance_changes",),
        checks=(
            Check(
                "top_accounts_match_chain",
                "top_account_history",
                "eth_getBalance at sampled range ends",
                checks.top_accounts_match_chain,
            ),
        ),
    ),
    AssetGroup(
        op="staking_range",
        kind="staking_range",
        family="staking",
        outputs=(
            ("staking_events", "decoded staking precompile events (Delegate, Undelegate, ...)"),
        ),
        compute=compute.staking_range,
        partitioned=True,
    ),
    AssetGroup(
        op="staking_concentration",
        kind="staking_rollups",
        family="staking",
        outputs=(
            ("validator_stake", "per validator stake and delegator count over time"),
            ("staking_concentration", "HHI, Nakamoto coefficient and top-k share over time"),
        ),
        compute=compute.staking_concentration,
        inputs=("staking_events",),
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

KIND_OUTPUTS: dict[str, tuple[str, ...]] = {}
for _group in ASSET_GROUPS:
    KIND_OUTPUTS[_group.kind] = (*KIND_OUTPUTS.get(_group.kind, ()), *_group.names)


def family_stream(job: AnalyticsJob, family: Family) -> str | None:
    """The chain_sync stream a family reads (``None`` if the job does not set it)."""
    if family == "balance":
        return job.spec.balance_diffs
    return job.spec.staking.logs if job.spec.staking is not None else None


def groups_of(job: AnalyticsJob) -> list[AssetGroup]:
    """The groups a job computes (balances and supply, staking: whichever it sets)."""
    return [g for g in ASSET_GROUPS if family_stream(job, g.family) is not None]


def kinds_of(job: AnalyticsJob) -> list[str]:
    """The planned kinds of a job, in table order."""
    return list(dict.fromkeys(g.kind for g in groups_of(job)))
