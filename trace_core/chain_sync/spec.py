"""The chain_sync job model (reference digest 7.1) and its strict validation.

A job file looks like::

    kind: chain_sync
    name: monad_mainnet_bootstrap
    chain_id: 143
    mode: {kind: fixed_target, from_block: 0, to_block: 46000000}   # end-exclusive
    streams:
      blocks: {cryo_dataset_name: blocks, rpc_pool: standard, chunk_size: 5000, max_inflight: 20}

An optional ``hot: {rpc_pool: ..., max_blocks_per_tick: 200, compact: ...}`` block also follows
the chain tip into Postgres hot tables (docs/hot_path.md). ``epoch_blocks`` (default 100,000,
at least every ``chunk_size``) sets how many blocks one Dagster partition spans
(docs/partitions.md). Unknown fields are rejected at every
level and types are strict (``"5"`` is not an int, ``true``
is not 1). Every problem is reported as ``file:line: field.path: message``. RPC URLs never
appear in YAML: a stream names a pool, resolved at runtime from ``TRACE_RPC_POOL_<POOL>_URL``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from trace_core.chain_sync.analytics_spec import (
    BALANCE_DIFF_DATASETS,
    LOG_DATASETS,
    OUTPUT_PREFIX,
    AnalyticsSpec,
)
from trace_core.errors import ConfigError, InvalidJobFile
from trace_core.settings import rpc_pool_env_var, rpc_pool_url
from trace_core.yamlfile import LoadedYaml, YamlPath, dotted_path

# Every dataset cryo 0.3.2 can extract (its crates/freeze/src/datasets/*.rs, read from the
# installed wheel). A name outside this list makes cryo fail with an opaque TypeError.
CRYO_DATASETS: frozenset[str] = frozenset(
    {
        "address_appearances",
        "balance_diffs",
        "balance_reads",
        "balances",
        "blocks",
        "code_diffs",
        "code_reads",
        "codes",
        "contracts",
        "erc20_balances",
        "erc20_metadata",
        "erc20_supplies",
        "erc20_transfers",
        "erc721_metadata",
        "erc721_transfers",
        "eth_calls",
        "four_byte_counts",
        "geth_balance_diffs",
        "geth_calls",
        "geth_code_diffs",
        "geth_nonce_diffs",
        "geth_opcodes",
        "geth_storage_diffs",
        "javascript_traces",
        "logs",
        "native_transfers",
        "nonce_diffs",
        "nonce_reads",
        "nonces",
        "slots",
        "storage_diffs",
        "storage_reads",
        "trace_calls",
        "traces",
        "transactions",
        "vm_traces",
    }
)

MAX_BLOCK = 2**53  # JSON-safe everywhere a block number travels
# Blocks per epoch (one Dagster partition) unless a job sets epoch_blocks: Monad makes ~104M
# blocks a year (300 ms blocks), so ~1,000 partitions per stream and year.
DEFAULT_EPOCH_BLOCKS = 100_000
_SLUG = re.compile(r"^[a-z0-9_]{1,64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_POOL = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_HEX = re.compile(r"^0x[0-9a-fA-F]*$")


def _slug(value: str) -> str:
    if not _SLUG.match(value):
        raise PydanticCustomError(
            "slug", "must be 1-64 characters of lowercase letters, digits and '_'"
        )
    return value


def _job_name(value: str) -> str:
    if not _NAME.match(value):
        raise PydanticCustomError(
            "job_name",
            "must be 1-64 characters of lowercase letters, digits, '_' and '-', starting with a letter or digit",
        )
    return value


def _pool(value: str) -> str:
    # the value is never echoed: a URL here may carry an API key
    if "://" in value:
        raise PydanticCustomError(
            "pool_url",
            "must name an RPC pool, not a URL; put the URL in TRACE_RPC_POOL_<POOL>_URL",
        )
    if not _POOL.match(value):
        raise PydanticCustomError(
            "pool",
            "must be 1-64 characters of lowercase letters, digits, '_' and '-', starting with a letter or digit",
        )
    return value


def _cryo_dataset(value: str) -> str:
    _slug(value)
    if value not in CRYO_DATASETS:
        raise PydanticCustomError(
            "cryo_dataset",
            "unknown cryo dataset '{name}'; cryo 0.3.2 has: {known}",
            {"name": value, "known": ", ".join(sorted(CRYO_DATASETS))},
        )
    return value


def _hex(value: str) -> str:
    if not _HEX.match(value):
        raise PydanticCustomError("hex", "must be a 0x-prefixed hex string")
    return value


def _stream_key(value: str) -> str:
    if value.startswith(OUTPUT_PREFIX):
        raise PydanticCustomError(
            "reserved_stream",
            "stream names starting with '{prefix}' are reserved for analytics outputs",
            {"prefix": OUTPUT_PREFIX},
        )
    return value


Slug = Annotated[str, AfterValidator(_slug)]
# A stream key is a dataset key and a query relation name: analytics_* belong to analytics.
StreamKey = Annotated[str, AfterValidator(_slug), AfterValidator(_stream_key)]
# A job or alert name: what users type on the command line and see in the Dagster UI.
Name = Annotated[str, AfterValidator(_job_name)]
BlockNumber = Annotated[int, Field(ge=0, lt=MAX_BLOCK)]
HexString = Annotated[str, AfterValidator(_hex)]
PositiveCount = Annotated[int, Field(gt=0, le=1_000_000)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FixedTarget(_Model):
    """Sync ``[from_block, to_block)`` and stop (to include block N, set ``to_block: N+1``)."""

    kind: Literal["fixed_target"]
    from_block: BlockNumber
    to_block: Annotated[int, Field(ge=0, le=MAX_BLOCK)]

    @field_validator("to_block")
    @classmethod
    def _after_from(cls, value: int, info: ValidationInfo) -> int:
        start = info.data.get("from_block")
        if start is not None and value <= start:
            raise PydanticCustomError(
                "range",
                "must be greater than from_block ({start}); ranges are end-exclusive",
                {"start": start},
            )
        return value


class FollowHead(_Model):
    """Follow the chain head forever, planning up to ``max(from_block, head + 1 - tail_lag)``."""

    kind: Literal["follow_head"]
    from_block: BlockNumber
    tail_lag: Annotated[int, Field(ge=0, le=1_000_000)]
    head_poll_interval_seconds: Annotated[int, Field(gt=0, le=86_400)]
    max_head_age_seconds: Annotated[int, Field(gt=0, le=7 * 86_400)]

    @field_validator("max_head_age_seconds")
    @classmethod
    def _not_below_poll(cls, value: int, info: ValidationInfo) -> int:
        poll = info.data.get("head_poll_interval_seconds")
        if poll is not None and value < poll:
            raise PydanticCustomError(
                "head_age",
                "must be at least head_poll_interval_seconds ({poll}), or every observation goes stale",
                {"poll": poll},
            )
        return value


class CryoOptions(_Model):
    """Extra ``cryo.freeze`` arguments a stream may set. Trace owns blocks, rpc and output."""

    include_columns: list[Slug] | None = None
    exclude_columns: list[Slug] | None = None
    columns: list[Slug] | None = None
    sort: list[Slug] | None = None
    hex: bool | None = None
    requests_per_second: PositiveCount | None = None
    max_concurrent_requests: PositiveCount | None = None
    max_concurrent_chunks: PositiveCount | None = None
    inner_request_size: PositiveCount | None = None
    row_group_size: PositiveCount | None = None
    n_row_groups: PositiveCount | None = None
    no_stats: bool | None = None
    compression: list[Slug] | None = None
    contract: HexString | None = None
    topic0: HexString | None = None
    topic1: HexString | None = None
    topic2: HexString | None = None
    topic3: HexString | None = None

    def as_kwargs(self) -> dict[str, Any]:
        """Only the options that were set, as ``cryo.freeze`` keyword arguments."""
        return self.model_dump(exclude_none=True)


class StreamSpec(_Model):
    """One dataset of the job: which cryo dataset, from which pool, in what range sizes."""

    cryo_dataset_name: Annotated[str, AfterValidator(_cryo_dataset)]
    rpc_pool: Annotated[str, AfterValidator(_pool)]
    chunk_size: Annotated[int, Field(gt=0, le=100_000_000)]
    max_inflight: Annotated[int, Field(gt=0, le=10_000)]
    cryo_options: CryoOptions = CryoOptions()


class HotSpec(_Model):
    """Follow the chain tip into the hot tables (``trace_hot_follower``), optionally compacting
    final hot ranges into cold versions (``trace_hot_compactor``).

    ``compact`` defaults to true for fixed_target jobs and must stay false for follow_head jobs,
    whose cold versions chain_sync keeps writing (see ``compacts``).
    """

    rpc_pool: Annotated[str, AfterValidator(_pool)]
    max_blocks_per_tick: Annotated[int, Field(gt=0, le=10_000)] = 200
    compact: bool | None = None


def compacts(mode_kind: str, compact: bool | None) -> bool:
    """Whether a hot block compacts: its ``compact``, else true for fixed_target only.

    A follow_head job's chain_sync keeps committing ranges cut at the moving head; compacted
    versions would overlap them, and the registry's newest-wins rule would hide one of the two.
    """
    return (mode_kind == "fixed_target") if compact is None else compact


def hot_start_block(
    mode_kind: str,
    *,
    from_block: int,
    to_block: int | None,
    tail_lag: int | None,
    observed_head: int | None,
) -> int | None:
    """Where the follower starts a chain it has never followed (docs/hot_path.md).

    fixed_target: ``to_block`` (hot continues where the bounded sync ends). follow_head:
    ``max(from_block, head + 1 - tail_lag)``, the planner's eligible end, so hot covers the
    tail chain_sync has not planned yet; None until a head has been observed.
    """
    if mode_kind == "fixed_target":
        return to_block
    if observed_head is None or tail_lag is None:
        return None
    return max(from_block, observed_head + 1 - tail_lag)


class ChainSyncSpec(_Model):
    """A chain_sync job: identity ``(org_id, name)``, a mode and at least one stream."""

    kind: Literal["chain_sync"]
    name: Name
    chain_id: Annotated[int, Field(gt=0, lt=2**63)]
    mode: Annotated[FixedTarget | FollowHead, Field(discriminator="kind")]
    streams: Annotated[dict[StreamKey, StreamSpec], Field(min_length=1)]
    finality_depth: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    max_attempts: Annotated[int, Field(gt=0, le=100)] | None = None
    # Blocks per Dagster partition (an epoch): fine ranges stay in Trace state. The default
    # keeps a Monad stream (~104M blocks/year) near 1,000 partitions a year.
    epoch_blocks: Annotated[int, Field(gt=0, le=10**11)] | None = None
    hot: HotSpec | None = None
    analytics: AnalyticsSpec | None = None

    @field_validator("epoch_blocks")
    @classmethod
    def _epoch_holds_a_chunk(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None:
            return value
        streams = info.data.get("streams") or {}
        too_big = sorted(k for k, s in streams.items() if s.chunk_size > value)
        if too_big:
            raise PydanticCustomError(
                "epoch_blocks",
                "must be at least every stream's chunk_size ({keys} larger)",
                {"keys": ", ".join(too_big)},
            )
        return value

    @property
    def epoch_size(self) -> int:
        """``epoch_blocks``, or the default (at least the largest ``chunk_size``)."""
        if self.epoch_blocks is not None:
            return self.epoch_blocks
        return max([DEFAULT_EPOCH_BLOCKS, *(s.chunk_size for s in self.streams.values())])

    @field_validator("analytics")
    @classmethod
    def _analytics_streams(
        cls, value: AnalyticsSpec | None, info: ValidationInfo
    ) -> AnalyticsSpec | None:
        if value is None:
            return value
        streams = info.data.get("streams") or {}
        wanted = [("balance_diffs", value.balance_diffs, BALANCE_DIFF_DATASETS)]
        if value.staking is not None:
            wanted.append(("staking.logs", value.staking.logs, LOG_DATASETS))
        if value.supply is not None:
            wanted.append(("supply.blocks", value.supply.blocks, frozenset({"blocks"})))
            wanted.append(
                ("supply.transactions", value.supply.transactions, frozenset({"transactions"}))
            )
        for name, key, datasets in wanted:
            if key is None:
                continue
            stream = streams.get(key)
            if stream is None:
                raise PydanticCustomError(
                    "analytics_stream",
                    "{name} names stream '{key}', which this job does not have",
                    {"name": name, "key": key},
                )
            if stream.cryo_dataset_name not in datasets:
                raise PydanticCustomError(
                    "analytics_dataset",
                    "{name}: stream '{key}' is cryo '{got}', needs one of {want}",
                    {
                        "name": name,
                        "key": key,
                        "got": stream.cryo_dataset_name,
                        "want": ", ".join(sorted(datasets)),
                    },
                )
        mode = info.data.get("mode")
        if value.balance_diffs is not None and mode is not None and mode.from_block != 0:
            raise PydanticCustomError(
                "analytics_from_block",
                "balance_diffs needs mode.from_block 0: balances accumulate from genesis",
            )
        return value

    @field_validator("hot")
    @classmethod
    def _no_compaction_while_following(
        cls, value: HotSpec | None, info: ValidationInfo
    ) -> HotSpec | None:
        mode = info.data.get("mode")
        if value is not None and value.compact and isinstance(mode, FollowHead):
            raise PydanticCustomError(
                "hot_compact",
                "compact: true is not allowed with follow_head: chain_sync already commits the "
                "ranges behind the head; leave compact unset (false) for follow_head jobs",
            )
        return value

    @property
    def pools(self) -> list[str]:
        """Distinct RPC pools of the streams, sorted."""
        return sorted({s.rpc_pool for s in self.streams.values()})


def missing_pool_vars(
    spec: ChainSyncSpec, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``{pool: env var}`` for every pool whose ``TRACE_RPC_POOL_<POOL>_URL`` is unset."""
    return {p: rpc_pool_env_var(p) for p in spec.pools if rpc_pool_url(p, environ) is None}


def validate_job(
    doc: LoadedYaml, *, require_pools: bool = False, environ: Mapping[str, str] | None = None
) -> ChainSyncSpec:
    """Validate a loaded document. Raises ``InvalidJobFile`` listing every problem with its line.

    ``require_pools`` also rejects streams whose pool has no URL in the environment.
    """
    if not isinstance(doc.data, dict):
        raise ConfigError(
            "the top level must be a mapping (kind: chain_sync, ...)", file=doc.source, line=1
        )
    try:
        spec = ChainSyncSpec.model_validate(doc.data)
    except ValidationError as exc:
        raise InvalidJobFile(validation_problems(doc, exc)) from None
    if require_pools:
        missing = missing_pool_vars(spec, environ)
        problems = [
            ConfigError(
                f"rpc pool {s.rpc_pool!r} has no URL: set {missing[s.rpc_pool]}",
                file=doc.source,
                line=doc.line_of(("streams", key, "rpc_pool")),
                field=f"streams.{key}.rpc_pool",
            )
            for key, s in spec.streams.items()
            if s.rpc_pool in missing
        ]
        if spec.hot is not None and rpc_pool_url(spec.hot.rpc_pool, environ) is None:
            problems.append(
                ConfigError(
                    f"rpc pool {spec.hot.rpc_pool!r} has no URL: set "
                    f"{rpc_pool_env_var(spec.hot.rpc_pool)}",
                    file=doc.source,
                    line=doc.line_of(("hot", "rpc_pool")),
                    field="hot.rpc_pool",
                )
            )
        if problems:
            raise InvalidJobFile(problems)
    return spec


_MESSAGES = {
    "extra_forbidden": "unknown field",
    "missing": "field required",
    "union_tag_not_found": "field 'kind' required (fixed_target or follow_head)",
}


def validation_problems(doc: LoadedYaml, exc: ValidationError) -> list[ConfigError]:
    """Each error of ``exc`` as a ``ConfigError`` at its file line and field path, in file
    order (shared by every YAML kind validated with pydantic)."""
    problems = [_problem(doc, err) for err in exc.errors(include_url=False, include_input=False)]
    problems.sort(key=lambda p: p.line or 0)
    return problems


def _problem(doc: LoadedYaml, err: Any) -> ConfigError:
    path, is_key = _yaml_path(tuple(err["loc"]), doc.data)
    message = _MESSAGES.get(err["type"], err["msg"])
    if is_key:
        message = f"invalid key: {message}"
    return ConfigError(
        message, file=doc.source, line=doc.line_of(path), field=dotted_path(path) or None
    )


def _yaml_path(loc: tuple[Any, ...], data: Any) -> tuple[YamlPath, bool]:
    """Map a pydantic error location onto the document path, dropping union tags.

    Returns the path and whether the error is about a mapping key rather than a value.
    """
    path: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if part == "[key]":
            return tuple(path), True
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            path.append(part)
            node = node[part]
        elif last and isinstance(part, str):
            path.append(part)  # a missing field: reported at its parent's line
        # otherwise a discriminated-union tag or validator name: not part of the file
    return tuple(path), False
