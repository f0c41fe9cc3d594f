"""Task lifecycle: create (with outbox wake-up), claim, heartbeat, complete with fencing, reap."""

from trace_core.tasks.lifecycle import (
    Lease,
    claim,
    complete_failure,
    complete_success,
    create_task,
    fence,
    finish_succeeded,
    heartbeat,
    reap,
)
from trace_core.tasks.retry import RetryPolicy

__all__ = [
    "Lease",
    "RetryPolicy",
    "claim",
    "complete_failure",
    "complete_success",
    "create_task",
    "fence",
    "finish_succeeded",
    "heartbeat",
    "reap",
]
