"""The built-in operators and their completion hooks, assembled into a registry.

``default_registry()`` is built once per worker run (``engine.worker_run.run_worker``) and
passed to ``engine.execute.execute_batch``. Tests add their own operators (``noop``, ``fail``:
tests/operators.py) with ``extend_default_registry``; production registers only these.
"""

from __future__ import annotations

from collections.abc import Callable

from trace_core.alerts import evaluate
from trace_core.chain_sync import planner
from trace_core.operators import block_follower, parquet_compact
from trace_core.operators.base import OperatorRegistry
from trace_core.operators.cryo_ingest import cryo_ingest_operator

Registration = Callable[[OperatorRegistry], None]
_EXTENSIONS: list[Registration] = []


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


def extend_default_registry(registration: Registration) -> None:
    """Add ``registration`` to every ``default_registry()`` this process builds from now on
    (the test suite registers its ``noop``/``fail`` operators this way). Idempotent."""
    if registration not in _EXTENSIONS:
        _EXTENSIONS.append(registration)


def default_registry() -> OperatorRegistry:
    """A registry of every built-in operator, plus any ``extend_default_registry`` added."""
    reg = OperatorRegistry()
    for registration in _EXTENSIONS:
        registration(reg)
    register_builtin(reg)
    return reg
