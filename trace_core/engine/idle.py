"""Idle accounting: what work is still owed (``trace-lite run --until-idle`` stops at idle)."""

from __future__ import annotations

from dataclasses import dataclass

from trace_core.alerts.delivery import delivery_backlog
from trace_core.queue.base import BUFFER_QUEUE
from trace_core.runtime import Runtime
from trace_core.tasks import retry as task_retry

# Queues whose messages are work still owed before the system is idle (task wake-ups are
# covered by the task table itself).
IDLE_QUEUES: tuple[str, ...] = (BUFFER_QUEUE, "dataset_events")


@dataclass(frozen=True)
class OutstandingWork:
    """What is still owed: tasks queued or running (not paused); pending outbox rows, messages
    on ``IDLE_QUEUES`` and alert deliveries due now; and dead tasks (owed to a person)."""

    active: int
    pending: int
    dead: int

    @property
    def idle(self) -> bool:
        return self.active == 0 and self.pending == 0


def outstanding_work(rt: Runtime) -> OutstandingWork:
    """``OutstandingWork`` now (``trace-lite run --until-idle`` stops when it is idle)."""
    with rt.state() as conn:
        active, dead, pending = task_retry.outstanding_counts(conn)
    queued = 0
    for name in IDLE_QUEUES:
        stats = rt.queue.stats(name)
        queued += stats.depth + stats.in_flight
    return OutstandingWork(active, pending + queued + delivery_backlog(rt), dead)
