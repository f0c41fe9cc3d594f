"""The built-in operators and their completion hooks, assembled into a registry.

``default_registry()`` is built once per worker run and passed to ``worker.execute_batch``.
"""

from __future__ import annotations

from trace_core.alerts import evaluate
from trace_core.chain_sync import planner
from trace_core.errors import FatalError, TraceError
from trace_core.operators import block_follower, parquet_compact
from trace_core.operators.base import Completion, OperatorContext, OperatorRegistry
from trace_core.operators.cryo_ingest import cryo_ingest_operator


def _noop(ctx: OperatorContext) -> Completion:
    return Completion(outputs={"noop": True})


def _failing_operator(ctx: OperatorContext) -> Completion:
    """Test operator: fails as its payload says (``fatal``: bool, ``message``)."""
    payload = ctx.lease.payload
    if payload.get("fatal"):
        raise FatalError(str(payload.get("message", "fatal failure")))
    raise TraceError(str(payload.get("message", "retryable failure")))


def register_builtin(registry: OperatorRegistry) -> None:
    """Register cryo_ingest (with chain_sync range hooks), block_follower,
    parquet_compact and alert_evaluate."""
    registry.register(
        "cryo_ingest",
        cryo_ingest_operator,
        # its commit announces the version (``datasets.commit.commit_version``)
        on_success=[planner.on_task_succeeded],
        on_dead=[planner.on_task_dead],
    )
    block_follower.register(registry)
    parquet_compact.register(registry)
    registry.register(evaluate.OPERATOR, evaluate.alert_evaluate_operator)


def default_registry() -> OperatorRegistry:
    """A registry of every built-in operator (plus the ``noop`` and ``fail`` test operators)."""
    reg = OperatorRegistry()
    reg.register("noop", _noop)
    reg.register("fail", _failing_operator)
    register_builtin(reg)
    return reg
