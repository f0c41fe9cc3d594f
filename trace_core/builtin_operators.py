"""Registration of the built-in operators with their chain_sync completion hooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trace_core.worker import OperatorRegistry


def register_builtin(registry: OperatorRegistry) -> None:
    """Register every built-in operator (cryo_ingest, ...)."""
