"""Test operators: ``noop`` and ``fail``, registered into every default registry of the test
process (tests/conftest.py calls ``extend_default_registry(register)``); production never
registers them (trace_core/engine/registry.py)."""

from __future__ import annotations

from trace_core.errors import FatalError, TraceError
from trace_core.operators.base import Completion, OperatorContext, OperatorRegistry

NOOP = "noop"
FAIL = "fail"


def noop(ctx: OperatorContext) -> Completion:
    return Completion(outputs={"noop": True})


def failing(ctx: OperatorContext) -> Completion:
    """Fails as its payload says (``fatal``: bool, ``message``)."""
    payload = ctx.lease.payload
    if payload.get("fatal"):
        raise FatalError(str(payload.get("message", "fatal failure")))
    raise TraceError(str(payload.get("message", "retryable failure")))


def register(registry: OperatorRegistry) -> None:
    registry.register(NOOP, noop)
    registry.register(FAIL, failing)
