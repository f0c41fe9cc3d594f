"""The ``analytics:`` block of a chain_sync job: which streams feed which derived datasets.

Example (the job must start at block 0: balances accumulate from genesis)::

    analytics:
      balance_diffs: geth_balance_diffs      # a stream of cryo geth_balance_diffs
      genesis: {rpc_accounts: demo}          # or {file: genesis.json} or {zero: true}
      top_n: 10
      supply_window_blocks: 1000             # or full_history: true
      staking:
        logs: logs                           # a stream of cryo logs
        address: "0x0000000000000000000000000000000000001000"
      supply: {blocks: blocks, block_reward_wei: 0}   # reconcile: reward - base fee burned

Cross-field checks (streams exist and carry the right cryo dataset, from_block is 0) live in
``chain_sync.spec.ChainSyncSpec`` so each problem is reported at its file line.

Each output is the relation ``analytics_<name>`` of the job (``output_keys``): the Query Service
serves it under that name with ``--job`` and alerts of the job read it so. Its dataset is the
job's own, ``analytics_<name>__<job tag>`` on the job's chain (``job_dataset_key``), so two jobs
on one chain never share an output.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

# Monad's staking precompile (docs.monad.xyz, staking precompile page).
MONAD_STAKING_ADDRESS = "0x0000000000000000000000000000000000001000"
# The sender of Monad's system transactions (the per-block syscallReward, epoch changes): they
# are free, so the base fee burned is charged on every other transaction only.
MONAD_SYSTEM_ADDRESS = "0x6f49a8f621353f12378d0046e7d7e4b9b249dc9e"
# cryo datasets whose rows carry per-transaction balance changes (from_value / to_value).
BALANCE_DIFF_DATASETS = frozenset({"geth_balance_diffs", "balance_diffs"})
LOG_DATASETS = frozenset({"logs"})
MAX_TOP_N = 1000
# Dataset key of an analytics output: ``analytics_<name>``.
OUTPUT_PREFIX = "analytics_"
# What each input produces (trace_core.analytics.compute commits these, per range and roll-up).
BALANCE_OUTPUTS = (
    "balance_changes",
    "supply_deltas",
    "native_supply",
    "top_accounts",
    "top_account_history",
    "account_balances",
)
STAKING_OUTPUTS = ("staking_events", "validator_stake", "staking_concentration", "delegator_stake")

# Separates an output's relation name from the job tag in its dataset key (no output name
# contains a double underscore).
JOB_TAG_SEP = "__"

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_STREAM = re.compile(r"^[a-z0-9_]{1,64}$")
_POOL = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def _address(value: str) -> str:
    if not _ADDRESS.match(value):
        raise PydanticCustomError("address", "must be a 0x-prefixed 20-byte hex address")
    return value.lower()


def _stream(value: str) -> str:
    if not _STREAM.match(value):
        raise PydanticCustomError(
            "stream", "must name a stream key of this job (lowercase letters, digits and '_')"
        )
    return value


def _pool(value: str) -> str:
    if "://" in value or not _POOL.match(value):
        raise PydanticCustomError(
            "pool", "must name an RPC pool (its URL comes from TRACE_RPC_POOL_<POOL>_URL)"
        )
    return value


Address = Annotated[str, AfterValidator(_address)]
StreamKey = Annotated[str, AfterValidator(_stream)]
PoolName = Annotated[str, AfterValidator(_pool)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class GenesisSpec(_Model):
    """Where balances at genesis come from; exactly one field is set.

    ``file``: a JSON object ``{address: balance_wei}`` (balances as decimal strings or ints),
    relative paths resolved against the job file's directory. ``rpc_accounts``: the pool's
    ``eth_accounts`` with their ``eth_getBalance`` at block 0 (a dev chain's funded accounts:
    anvil's genesis alloc). ``zero: true``: no allocation (supply is then net issuance).
    """

    file: str | None = None
    rpc_accounts: PoolName | None = None
    zero: bool | None = None

    @model_validator(mode="after")
    def _one_source(self) -> GenesisSpec:
        chosen = [n for n in ("file", "rpc_accounts", "zero") if getattr(self, n)]
        if len(chosen) != 1:
            raise PydanticCustomError(
                "genesis", "set exactly one of file, rpc_accounts or zero: true"
            )
        return self


class StakingSpec(_Model):
    """Staking events (Monad's precompile ABI) from one logs stream, at ``address``."""

    logs: StreamKey
    address: Address
    top_k: Annotated[list[Annotated[int, Field(gt=0, le=MAX_TOP_N)]], Field(min_length=1)] = [
        1,
        5,
        10,
    ]


class RewardChange(_Model):
    """From ``from_block`` on, each block mints ``block_reward_wei`` (Monad's MIP-12: 25 -> 18 MON)."""

    from_block: Annotated[int, Field(gt=0)]
    block_reward_wei: Annotated[int, Field(ge=0, lt=10**38)]


class SupplySpec(_Model):
    """Supply by block reconciles with the protocol: each block's net supply change (from the
    balance diffs) must equal the block reward minted (every block after genesis:
    ``block_reward_wei``, then each of ``reward_changes`` from its block) minus the base fee
    burned: ``base_fee_per_gas`` times the gas charged. Without ``transactions`` the gas
    charged is the block's ``gas_used`` (Ethereum); with a cryo ``transactions`` stream it is
    the sum over the block's transactions of ``charge`` (``gas_limit``: Monad charges the
    whole limit, no refund), system transactions (from ``system_address``) being free.
    ``burn_addresses``: balances sent there are out of circulation (a dead address, or a dev
    chain's base-fee vault): supply excludes them."""

    blocks: StreamKey
    block_reward_wei: Annotated[int, Field(ge=0, lt=10**38)] = 0
    reward_changes: list[RewardChange] = []
    transactions: StreamKey | None = None
    charge: Literal["gas_used", "gas_limit"] = "gas_used"
    system_address: Address = MONAD_SYSTEM_ADDRESS
    burn_addresses: Annotated[list[Address], Field(max_length=100)] = []

    @model_validator(mode="after")
    def _consistent(self) -> SupplySpec:
        if self.charge == "gas_limit" and self.transactions is None:
            raise PydanticCustomError(
                "supply_charge", "charge: gas_limit needs transactions (a cryo transactions stream)"
            )
        starts = [c.from_block for c in self.reward_changes]
        if starts != sorted(set(starts)):
            raise PydanticCustomError(
                "supply_rewards", "reward_changes must be in increasing from_block order"
            )
        return self

    def reward_schedule(self) -> list[tuple[int, int]]:
        """``[(from_block, wei)]``: the reward from block 1 on, then each change."""
        steps = {1: self.block_reward_wei} | {
            c.from_block: c.block_reward_wei for c in self.reward_changes
        }
        return sorted(steps.items())


class AnalyticsSpec(_Model):
    """Derived datasets of a job: supply and balances from ``balance_diffs``, staking from
    ``staking.logs``. ``supply_window_blocks``: the supply series covers the last N synced
    blocks (default); ``full_history: true`` every block from 0."""

    balance_diffs: StreamKey | None = None
    genesis: GenesisSpec | None = None
    top_n: Annotated[int, Field(gt=0, le=MAX_TOP_N)] = 10
    supply_window_blocks: Annotated[int, Field(gt=0, le=100_000_000)] = 1000
    full_history: bool = False
    staking: StakingSpec | None = None
    supply: SupplySpec | None = None

    @model_validator(mode="after")
    def _something_and_genesis(self) -> AnalyticsSpec:
        if self.supply is not None and self.balance_diffs is None:
            raise PydanticCustomError("analytics_supply", "supply needs balance_diffs")
        if self.balance_diffs is None and self.staking is None:
            raise PydanticCustomError("analytics_empty", "set balance_diffs, staking, or both")
        if self.balance_diffs is not None and self.genesis is None:
            raise PydanticCustomError(
                "analytics_genesis",
                "balance_diffs needs genesis (file, rpc_accounts or zero: true): balances start "
                "from the genesis allocation",
            )
        return self

    def output_keys(self) -> tuple[str, ...]:
        """Dataset keys of every output this block produces, sorted."""
        names = (BALANCE_OUTPUTS if self.balance_diffs is not None else ()) + (
            STAKING_OUTPUTS if self.staking is not None else ()
        )
        return tuple(sorted(OUTPUT_PREFIX + n for n in names))


def output_keys(analytics: Mapping[str, Any] | None) -> tuple[str, ...]:
    """``AnalyticsSpec.output_keys`` of a stored ``analytics:`` block (the JSON a job's spec
    keeps in state; validated when the job was applied); ``()`` when the job has none."""
    if not analytics:
        return ()
    return AnalyticsSpec.model_validate(analytics, strict=False).output_keys()


def job_tag(job: str) -> str:
    """A slug naming ``job`` inside a dataset key: its name (``-`` as ``_``, at most 20
    characters) plus 8 hex of its sha256 (two names share a tag only if their prefixes and
    32-bit hashes both match), so ``a-b`` and ``a_b`` differ."""
    digest = hashlib.sha256(job.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^a-z0-9_]', '_', job)[:20]}_{digest}"


def job_dataset_key(job: str, relation: str) -> str:
    """Dataset key of output ``relation`` (``analytics_<name>``) of ``job``:
    ``analytics_<name>__<job_tag>`` (at most 64 characters); other keys are returned as is."""
    if not relation.startswith(OUTPUT_PREFIX):
        return relation
    return f"{relation}{JOB_TAG_SEP}{job_tag(job)}"


def shared_output_key(dataset_key: str) -> bool:
    """True for a per-chain ``analytics_<name>`` dataset: committed before outputs were per
    job, shared by every job on the chain, and no longer written (no stream or transform may
    take an ``analytics_`` name, so nothing else has such a key)."""
    return dataset_key.startswith(OUTPUT_PREFIX) and JOB_TAG_SEP not in dataset_key


def output_relation(dataset_key: str) -> str:
    """Relation name of an analytics output's dataset key (its job tag dropped); other keys
    (and the per-chain ``analytics_<name>`` keys of versions committed before outputs were per
    job) are returned as is."""
    if dataset_key.startswith(OUTPUT_PREFIX) and JOB_TAG_SEP in dataset_key:
        return dataset_key.split(JOB_TAG_SEP, 1)[0]
    return dataset_key
