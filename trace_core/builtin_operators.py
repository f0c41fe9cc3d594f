"""Registration of the built-in operators with their chain_sync completion hooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trace_core.worker import OperatorRegistry


def register_builtin(registry: OperatorRegistry) -> None:
    """Register cryo_ingest (with chain_sync range hooks), block_follower and parquet_compact."""
    from trace_core.chain_sync import planner
    from trace_core.operators import block_follower, parquet_compact
    from trace_core.operators.cryo_ingest import cryo_ingest_operator

    registry.register(
        "cryo_ingest",
        cryo_ingest_operator,
        on_success=planner.on_task_succeeded,
        on_dead=planner.on_task_dead,
    )
    block_follower.register(registry)
    parquet_compact.register(registry)
