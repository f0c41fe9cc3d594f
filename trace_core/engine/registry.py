"""The built-in operators and their completion hooks, assembled into a registry.

``default_registry()`` is built once per worker run (``engine.worker_run.run_worker``) and
passed to ``engine.execute.execute_batch``. Tests add their own operators (``noop``, ``fail``:
tests/operators.py) with ``extend_default_registry``; production registers only these.
"""

from __future__ import annotations

from collections.abc import Callable

from trace_core.alerts import evaluate
from trace_core.chain_sync import range_outcomes
from trace_core.operators import cryo_ingest, cryo_payload
from trace_core.operators.base import OperatorRegistry
from trace_core.transforms import operator as transform_operator

Registration = Callable[[OperatorRegistry], None]
_EXTENSIONS: list[Registration] = []


def register_builtin(registry: OperatorRegistry) -> None:
    """Register the operators production schedules: cryo_ingest (the planner's ranges, with
    chain_sync range hooks), alert_evaluate (alert routing's evaluations) and udf_transform
    (transform jobs); the last two query, so only they are issued a capability token. block_follower and parquet_compact
    run as services (``engine.service_steps``); their operators are registered only by an
    embedding that schedules them (``operators.block_follower.register``, ...)."""
    registry.register(
        cryo_payload.OPERATOR,
        cryo_ingest.cryo_ingest_operator,
        # its commit announces the version (``datasets.commit.commit_version``)
        on_success=[range_outcomes.on_task_succeeded],
        on_dead=[range_outcomes.on_task_dead],
    )
    registry.register(evaluate.OPERATOR, evaluate.alert_evaluate_operator, queries=True)
    transform_operator.register(registry)


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
