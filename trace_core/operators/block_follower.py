"""The block_follower operator: one bounded ``hot.follower.follow_pool`` step as a task.

Production runs the follower as a service (``engine.service_steps.follower_step`` calls
``follow_pool`` each tick) and does not register this operator; an embedding that wants the
step as a task (payload ``{"chain_id", "rpc_pool", "max_blocks"?, "start_block"?,
"batch_size"?}``) registers it with ``register`` (the tests do). The RPC URL comes from
``TRACE_RPC_POOL_<POOL>_URL``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from pydantic import Field, Strict

from trace_core.hot.follower import DEFAULT_MAX_BLOCKS, follow_pool
from trace_core.operators.base import Completion, OperatorContext, OperatorRegistry
from trace_core.operators.payload import NonNegativeInt, PositiveInt, TaskPayload

OPERATOR = "block_follower"


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
