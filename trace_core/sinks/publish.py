"""Producer side of buffered sinks: stage a batch object, then publish its pointer.

An operator never writes Postgres data. It stages its rows as one JSONL object at
``batches/{task_id}/{attempt}/{destination}.jsonl`` (validated with the sink's own strict
parser), then, inside its fenced completion transaction on Postgres state, enqueues an outbox
row pointing at it. A stale attempt fails the fence, its transaction rolls back, and its batch
is never published. The outbox id is deterministic, so publishing the same ref twice is one row.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from trace_core.errors import InvalidBatch
from trace_core.outbox import enqueue
from trace_core.queue.base import BUFFER_QUEUE
from trace_core.sinks.schemas import SinkRow, dump_row, get_destination, validate_row
from trace_core.storage.base import ObjectStore

log = logging.getLogger(__name__)

BATCH_CONTENT_TYPE = "application/jsonl"
BATCH_PREFIX = "batches/"
MAX_BATCH_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class BatchRef:
    """A staged (not yet published) batch object."""

    destination: str
    schema_version: int
    batch_key: str
    row_count: int
    size_bytes: int


def batch_key(task_id: uuid.UUID, attempt: int, destination: str) -> str:
    """Where an attempt's batch for ``destination`` lives; a retry of it overwrites it."""
    return f"{BATCH_PREFIX}{task_id}/{attempt}/{destination}.jsonl"


def encode_batch(
    destination: str, rows: Sequence[Mapping[str, Any] | SinkRow]
) -> tuple[bytes, int]:
    """Validate every row and return ``(jsonl_bytes, row_count)``.

    Raises ``InvalidBatch`` naming the destination, row index and field of the first bad row.
    """
    dest = get_destination(destination)
    lines = [dump_row(validate_row(dest, row, row=i)) for i, row in enumerate(rows)]
    data = b"".join(line + b"\n" for line in lines)
    return data, len(lines)


def stage_batch(
    store: ObjectStore,
    *,
    destination: str,
    task_id: uuid.UUID,
    attempt: int,
    rows: Sequence[Mapping[str, Any] | SinkRow],
    max_bytes: int = MAX_BATCH_BYTES,
) -> BatchRef:
    """Validate ``rows`` and write them as JSONL at ``batch_key(task_id, attempt, destination)``.

    Nothing is published yet (see ``publish_batch``). Raises ``InvalidBatch`` (a FatalError)
    naming the row index and field, or when the object would exceed ``max_bytes``; storage
    failures raise ``StorageError``.
    """
    if attempt < 1:
        raise InvalidBatch(f"attempt must be >= 1, got {attempt}", destination=destination)
    dest = get_destination(destination)
    data, count = encode_batch(destination, rows)
    if len(data) > max_bytes:
        raise InvalidBatch(
            f"batch of {len(data)} bytes exceeds the {max_bytes}-byte cap", destination=dest.name
        )
    key = batch_key(task_id, attempt, dest.name)
    store.put_bytes(key, data, content_type=BATCH_CONTENT_TYPE)
    log.info(
        "staged sink batch",
        extra={
            "task_id": str(task_id),
            "attempt": attempt,
            "destination": dest.name,
            "rows": count,
            "bytes": len(data),
        },
    )
    return BatchRef(dest.name, dest.schema_version, key, count, len(data))


def buffer_message(ref: BatchRef, *, task_id: uuid.UUID, attempt: int) -> dict[str, Any]:
    """The pointer message the sink receives for ``ref`` (never the rows themselves)."""
    return {
        "destination": ref.destination,
        "schema_version": ref.schema_version,
        "batch_key": ref.batch_key,
        "content_type": BATCH_CONTENT_TYPE,
        "row_count": ref.row_count,
        "batch_size_bytes": ref.size_bytes,
        "task_id": str(task_id),
        "attempt": attempt,
    }


def publish_batch(
    conn: psycopg.Connection[Any], ref: BatchRef, *, task_id: uuid.UUID, attempt: int
) -> None:
    """Enqueue the pointer to ``ref`` on ``BUFFER_QUEUE`` through the outbox.

    Call inside the attempt's fenced completion transaction on Postgres state (after
    ``lifecycle.fence``/``complete_success``): a stale attempt's fence fails, the transaction
    rolls back and nothing is published. The outbox id derives from (task_id, attempt,
    destination), so a repeat is a no-op. Raises ``InvalidBatch`` when ``ref`` was not staged
    for this task attempt.
    """
    dest = get_destination(ref.destination)
    expected = batch_key(task_id, attempt, dest.name)
    if ref.batch_key != expected or ref.schema_version != dest.schema_version:
        raise InvalidBatch(
            f"batch ref {ref.batch_key!r} (schema v{ref.schema_version}) does not belong to "
            f"task {task_id} attempt {attempt} (expected {expected!r}, v{dest.schema_version})",
            destination=dest.name,
        )
    enqueue(
        conn,
        topic=BUFFER_QUEUE,
        payload=buffer_message(ref, task_id=task_id, attempt=attempt),
        dedupe_name=f"{BUFFER_QUEUE}:{task_id}:{attempt}:{dest.name}",
    )
