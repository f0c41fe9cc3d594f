"""The block_follower operator: one bounded ``follow_once`` step for a chain and RPC pool.

Two ways to run it (see docs/hot_path.md): a Dagster sensor calling ``follow_pool`` each
tick (recommended: the follower is a short, repeated step, not a range of work), or a task
whose payload is ``{"chain_id", "rpc_pool", "max_blocks"?, "start_block"?, "batch_size"?}``
run by the worker like any operator. The RPC URL comes from ``TRACE_RPC_POOL_<POOL>_URL``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Annotated, Any

from pydantic import Field, Strict

from trace_core.errors import ConfigError
from trace_core.hot.follower import FollowResult, follow_once
from trace_core.operators.base import Completion, OperatorContext, OperatorRegistry
from trace_core.operators.payload import NonNegativeInt, PositiveInt, TaskPayload
from trace_core.runtime import Runtime
from trace_core.settings import rpc_pool_env_var, rpc_pool_urls

OPERATOR = "block_follower"
DEFAULT_MAX_BLOCKS = 200


def follow_pool(
    rt: Runtime,
    chain_id: int,
    rpc_pool: str,
    *,
    max_blocks: int = DEFAULT_MAX_BLOCKS,
    start_block: int | None = None,
    batch_size: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> FollowResult:
    """``follow_once`` against the pool's URLs (failing over between them). Raises
    ``ConfigError`` when the pool is unset."""
    urls = rpc_pool_urls(rpc_pool, environ)
    if not urls:
        raise ConfigError(f"rpc pool {rpc_pool!r} has no URL", field=rpc_pool_env_var(rpc_pool))
    kwargs: dict[str, Any] = {"start_block": start_block}
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    return follow_once(rt.settings, rt.dbs, chain_id, urls, max_blocks, **kwargs)


class BlockFollowerPayload(TaskPayload):
    """A ``block_follower`` task payload: one bounded step for a chain and RPC pool."""

    chain_id: PositiveInt
    rpc_pool: Annotated[str, Strict(), Field(min_length=1)]
    max_blocks: PositiveInt | None = None
    start_block: NonNegativeInt | None = None
    batch_size: PositiveInt | None = None


def block_follower_operator(ctx: OperatorContext) -> Completion:
    """Worker entry point. Raises ``InvalidPayload`` for a malformed payload."""

    p = BlockFollowerPayload.parse(ctx.lease.payload)
    result = follow_pool(
        ctx.runtime,
        p.chain_id,
        p.rpc_pool,
        max_blocks=p.max_blocks or DEFAULT_MAX_BLOCKS,
        start_block=p.start_block,
        batch_size=p.batch_size,
    )
    ctx.check_lease()
    return Completion(outputs=asdict(result))


def register(registry: OperatorRegistry) -> None:
    """Add ``block_follower`` to a worker registry."""
    registry.register(OPERATOR, block_follower_operator)
