"""The ``noop`` operator the Dagster benchmark runs (production registers no test operator:
trace_core/engine/registry.py); ``register`` adds it to every default registry of a process."""

from __future__ import annotations

from trace_core.engine.registry import extend_default_registry
from trace_core.operators.base import Completion, OperatorContext, OperatorRegistry


def noop(ctx: OperatorContext) -> Completion:
    return Completion(outputs={"noop": True})


def _register(registry: OperatorRegistry) -> None:
    registry.register("noop", noop)


def register() -> None:
    extend_default_registry(_register)
