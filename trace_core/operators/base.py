"""The operator contract: what an operator receives, what it returns, and the registry.

An operator is ``Callable[[OperatorContext], Completion]``. The worker claims the task, hands
the operator an ``OperatorContext`` (runtime, lease, capability token, liveness), and completes
the task with fencing from the ``Completion`` it returns. Hooks registered with an operator run
inside the completion transaction, after the task row is finished.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from psycopg import Connection

from trace_core.errors import InvalidPayload, StaleAttempt
from trace_core.runtime import Runtime
from trace_core.storage.base import ObjectStore
from trace_core.storage.broker import ScopedCredentials, scoped_store
from trace_core.tasks.lifecycle import Lease


@dataclass
class Completion:
    """What an operator returns on success.

    ``commit`` runs inside the completion transaction and must fence and finish the task
    (for example ``commit_dataset_version``); without it the worker calls ``complete_success``.
    """

    outputs: dict[str, Any] = field(default_factory=dict)
    commit: Callable[[Connection[Any]], dict[str, Any]] | None = None


class OperatorContext:
    """Handed to an operator: the runtime, the lease, its capability token and a liveness check.

    ``capability_token`` is issued, for an operator registered with ``queries=True`` only, at
    claim for this attempt only, pinned to the dataset versions in the payload's ``grants``
    (``{dataset_uuid, dataset_version, manifest_key}`` each); a task without grants gets a
    token that reads nothing. Other operators get an empty string. ``credentials`` are the
    attempt's scoped S3 credentials when the Credential Broker is on (``engine.credentials``).
    """

    def __init__(
        self,
        runtime: Runtime,
        lease: Lease,
        lost: threading.Event,
        capability_token: str = "",
        credentials: ScopedCredentials | None = None,
    ) -> None:
        self.runtime = runtime
        self.lease = lease
        self.capability_token = capability_token
        self.credentials = credentials
        self._lost = lost

    @property
    def staging_store(self) -> ObjectStore:
        """Where the operator stages its output: with the Credential Broker on
        (``credentials``, issued at claim), the S3 store seen through the attempt's scoped
        credentials (it may write its own staging prefix and read its inputs, nothing else);
        otherwise the runtime's store."""
        if self.credentials is None:
            return self.runtime.store
        return scoped_store(self.runtime.store, self.credentials)

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def check_lease(self) -> None:
        """Raise ``StaleAttempt`` if a heartbeat found the lease gone."""
        if self._lost.is_set():
            raise StaleAttempt(
                self.lease.task_id, self.lease.attempt, "lease lost during execution"
            )


Operator = Callable[[OperatorContext], Completion]
# Hooks run inside the completion transaction, after the task row is finished.
SuccessHook = Callable[[Connection[Any], Lease, dict[str, Any]], None]
DeadHook = Callable[[Connection[Any], Lease], None]


class OperatorRegistry:
    """Operator name -> implementation, plus per-operator completion hooks.

    Build one per run (``trace_core.engine.registry.default_registry``) and pass it to the
    worker; registering a name twice replaces the operator and its hooks.
    """

    def __init__(self) -> None:
        self._ops: dict[str, Operator] = {}
        self._on_success: dict[str, list[SuccessHook]] = {}
        self._on_dead: dict[str, list[DeadHook]] = {}
        self._queries: set[str] = set()

    def register(
        self,
        name: str,
        op: Operator,
        *,
        on_success: Iterable[SuccessHook] = (),
        on_dead: Iterable[DeadHook] = (),
        queries: bool = False,
    ) -> None:
        """Register ``op`` as ``name``; hooks run in the given order. ``queries``: the operator
        reads datasets through the Query Service, so each attempt is issued a capability
        token (pinned to the payload's ``grants``); other operators get none."""
        self._ops[name] = op
        self._on_success[name] = list(on_success)
        self._on_dead[name] = list(on_dead)
        if queries:
            self._queries.add(name)
        else:
            self._queries.discard(name)

    def get(self, name: str) -> Operator:
        """The operator named ``name``. Raises ``InvalidPayload`` for an unknown name."""
        try:
            return self._ops[name]
        except KeyError:
            raise InvalidPayload(f"unknown operator {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._ops)

    def queries(self, name: str) -> bool:
        """Whether ``name`` is issued a capability token (see ``register``)."""
        return name in self._queries

    def success_hooks(self, name: str) -> list[SuccessHook]:
        return self._on_success.get(name, [])

    def dead_hooks(self, name: str) -> list[DeadHook]:
        return self._on_dead.get(name, [])
