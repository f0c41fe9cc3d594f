"""Choose the QueueDriver from settings: pgqueue (Lite) or SQS (AWS)."""

from __future__ import annotations

from trace_core.queue.base import QueueDriver
from trace_core.settings import Settings


def make_queue_driver(settings: Settings, state_url: str, *, pool_size: int = 4) -> QueueDriver:
    """A driver for ``settings.queue_driver``; the caller closes it.

    pgqueue lives in the state database at ``state_url``; SQS uses ``sqs_endpoint_url``,
    ``sqs_queue_prefix`` and ``aws_region``. Both dead-letter after ``max_receive_count``.
    """
    if settings.queue_driver == "sqs":
        from trace_core.queue.sqs import SqsQueue

        return SqsQueue(
            max_receive_count=settings.max_receive_count,
            queue_prefix=settings.sqs_queue_prefix,
            endpoint_url=settings.sqs_endpoint_url,
            region=settings.aws_region,
            default_visibility_timeout=settings.visibility_timeout_seconds,
        )
    from trace_core.queue.pgqueue import PgQueue

    return PgQueue(state_url, max_receive_count=settings.max_receive_count, pool_size=pool_size)
