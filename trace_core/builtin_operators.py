"""Registration of the built-in operators with their chain_sync completion hooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trace_core.worker import OperatorRegistry


def register_builtin(registry: OperatorRegistry) -> None:
    """Register cryo_ingest (with chain_sync range hooks and its dataset event), block_follower,
    parquet_compact and alert_evaluate."""
    from trace_core.alerts import evaluate, routing
    from trace_core.chain_sync import planner
    from trace_core.operators import block_follower, parquet_compact
    from trace_core.operators.cryo_ingest import cryo_ingest_operator

    registry.register(
        "cryo_ingest",
        cryo_ingest_operator,
        on_success=planner.on_task_succeeded,
        on_dead=planner.on_task_dead,
    )
    # a second registration adds a hook: the committed version's downstream wake-up
    registry.register(
        "cryo_ingest", cryo_ingest_operator, on_success=routing.announce_version_committed
    )
    block_follower.register(registry)
    parquet_compact.register(registry)
    registry.register(evaluate.OPERATOR, evaluate.alert_evaluate_operator)
