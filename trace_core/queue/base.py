"""The QueueDriver protocol shared by pgqueue and SQS.

Semantics (SQS-like): at-least-once, unordered. ``receive`` hides each returned message for
``visibility_timeout`` seconds and hands out a fresh receipt; ``ack``/``extend``/``nack`` need
the current receipt, and a stale one (the message was redelivered since) raises
``StaleReceipt`` and changes nothing. A message received ``max_receive_count`` times and not
acked is moved to the dead-letter store instead of being delivered again.

Fencing strength differs: pgqueue checks receipts in the database (any process is fenced);
SQS checks them only within one driver instance (see ``trace_core.queue.sqs``). Messages are
wake-ups, so the task lease in Postgres, not the receipt, is what protects the work.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from trace_core.errors import OutboxOnly

TASK_WAKEUP = "task_wakeup"
BUFFER_QUEUE = "buffer"

# Set only while trace_core.outbox.drain publishes: the drivers refuse a task wake-up published
# any other way (an alias or a bound method escapes the source scan in tests/, not this).
_OUTBOX_PUBLISHING: ContextVar[bool] = ContextVar("trace_outbox_publishing", default=False)


@contextmanager
def outbox_publishing() -> Iterator[None]:
    """The outbox's publish (``outbox.drain``; tests simulating a redelivery use it too)."""
    token = _OUTBOX_PUBLISHING.set(True)
    try:
        yield
    finally:
        _OUTBOX_PUBLISHING.reset(token)


def check_publisher(queue: str) -> None:
    """Raise ``OutboxOnly`` for a task wake-up published outside ``outbox_publishing()``.
    Every driver calls it first in ``publish`` and ``publish_batch``."""
    if queue == TASK_WAKEUP and not _OUTBOX_PUBLISHING.get():
        raise OutboxOnly("task wake-ups are published only by the outbox (trace_core.outbox)")


@dataclass(frozen=True)
class Message:
    queue: str
    message_id: str
    receipt: str
    payload: dict[str, Any]
    receive_count: int


@dataclass(frozen=True)
class DeadMessage:
    queue: str
    message_id: str
    payload: dict[str, Any]
    receive_count: int
    reason: str
    last_error: str | None


@dataclass(frozen=True)
class QueueStats:
    depth: int  # visible now or delayed, not in flight
    in_flight: int  # received and not yet acked, visibility not expired
    oldest_age_seconds: float | None
    dead: int


@runtime_checkable
class QueueDriver(Protocol):
    def publish(
        self, queue: str, payload: Mapping[str, Any], *, delay_seconds: float = 0
    ) -> str: ...

    def publish_batch(
        self, queue: str, payloads: Sequence[Mapping[str, Any]], *, delay_seconds: float = 0
    ) -> list[str]: ...

    def receive(
        self,
        queue: str,
        max_messages: int = 1,
        *,
        visibility_timeout: float,
        wait_seconds: float = 0,
    ) -> list[Message]: ...

    def ack(self, message: Message) -> None: ...

    def ack_batch(self, messages: Sequence[Message]) -> list[Message]:
        """Ack every message whose receipt is current; return the stale ones, untouched."""
        ...

    def ack_receive(
        self,
        done: Sequence[Message],
        queue: str,
        max_messages: int = 1,
        *,
        visibility_timeout: float,
    ) -> tuple[list[Message], list[Message]]:
        """``ack_batch(done)``, then ``receive`` without waiting: ``(stale, received)``. A
        consumer at batch 1 acks what it finished as it asks for the next (pgqueue: one
        statement)."""
        ...

    def extend(self, message: Message, visibility_timeout: float) -> None: ...

    def nack(
        self, message: Message, *, delay_seconds: float = 0, error: str | None = None
    ) -> None: ...

    def stats(self, queue: str) -> QueueStats: ...

    def list_dead(self, queue: str, limit: int = 100) -> list[DeadMessage]: ...

    def replay_dead(self, queue: str, message_ids: Sequence[str] | None = None) -> int: ...

    def purge_dead(self, queue: str, message_ids: Sequence[str] | None = None) -> int: ...

    def close(self) -> None: ...
