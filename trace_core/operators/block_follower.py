"""The block_follower operator: one bounded ``follow_once`` step for a chain and RPC pool.

Two ways to run it (see docs/hot_path.md): a Dagster sensor calling ``follow_pool`` each
tick (recommended: the follower is a short, repeated step, not a range of work), or a task
whose payload is ``{"chain_id", "rpc_pool", "max_blocks"?, "start_block"?, "batch_size"?}``
run by the worker like any operator. The RPC URL comes from ``TRACE_RPC_POOL_<POOL>_URL``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from trace_core.errors import ConfigError, InvalidPayload
from trace_core.hot.follower import FollowResult, follow_once
from trace_core.settings import rpc_pool_env_var, rpc_pool_urls

if TYPE_CHECKING:
    from trace_core.runtime import Runtime
    from trace_core.worker import Completion, OperatorContext, OperatorRegistry

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


def _int(payload: Mapping[str, Any], name: str, *, default: int | None, minimum: int) -> int | None:
    value = payload.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidPayload(f"{name} must be an integer >= {minimum}, got {value!r}", field=name)
    return value


def block_follower_operator(ctx: OperatorContext) -> Completion:
    """Worker entry point. Raises ``InvalidPayload`` for a malformed payload."""
    from trace_core.worker import Completion

    p = ctx.lease.payload
    chain_id = _int(p, "chain_id", default=None, minimum=1)
    pool = p.get("rpc_pool")
    if chain_id is None or not isinstance(pool, str) or not pool:
        raise InvalidPayload("block_follower needs chain_id and rpc_pool", field="rpc_pool")
    result = follow_pool(
        ctx.runtime,
        chain_id,
        pool,
        max_blocks=_int(p, "max_blocks", default=DEFAULT_MAX_BLOCKS, minimum=1)
        or DEFAULT_MAX_BLOCKS,
        start_block=_int(p, "start_block", default=None, minimum=0),
        batch_size=_int(p, "batch_size", default=None, minimum=1),
    )
    ctx.check_lease()
    return Completion(outputs=asdict(result))


def register(registry: OperatorRegistry) -> None:
    """Add ``block_follower`` to a worker registry."""
    registry.register(OPERATOR, block_follower_operator)
