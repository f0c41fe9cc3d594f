"""Task lifecycle: create (with outbox wake-up), claim, heartbeat, complete with fencing, reap."""

from trace_core.tasks.lifecycle import (
    Lease,
    NewTask,
    claim,
    complete_failure,
    complete_success,
    create_task,
    create_tasks,
    fence,
    finish_succeeded,
    heartbeat,
    reap,
)
from trace_core.tasks.retry import RetryPolicy

__all__ = [
    "Lease",
    "NewTask",
    "RetryPolicy",
    "claim",
    "complete_failure",
    "complete_success",
    "create_task",
    "create_tasks",
    "fence",
    "finish_succeeded",
    "heartbeat",
    "reap",
]
