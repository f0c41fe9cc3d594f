"""Queue drivers: wake-ups and buffer pointers, never a source of truth."""

from trace_core.queue.base import Message, QueueDriver, QueueStats

__all__ = ["Message", "QueueDriver", "QueueStats"]
