"""The sink: buffer-queue pointers in, one all-or-nothing upsert per batch into Postgres data.

Per message: validate the pointer, fetch the batch object (size-capped), parse every line
strictly, and only then write all rows in one transaction with ``ON CONFLICT (key) DO
NOTHING``; commit, then ack. A message that fails anywhere writes nothing and is nacked with
its error; the queue driver dead-letters it after ``max_receive_count`` receives, and
``trace-lite dlq replay`` sends it back after a fix. Delivery is at-least-once: a duplicate
pointer or a redelivery after a lost ack re-inserts nothing, because keys decide.

Row contents never reach a log line or an error message.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trace_core.db.queries import q
from trace_core.errors import (
    InvalidBatch,
    InvalidPayload,
    ObjectNotFound,
    RetryableError,
    StaleReceipt,
    TraceError,
)
from trace_core.queue.base import BUFFER_QUEUE, Message
from trace_core.runtime import Runtime
from trace_core.sinks.publish import BATCH_CONTENT_TYPE, batch_key
from trace_core.sinks.schemas import DESTINATIONS, Destination, SinkRow, parse_jsonl
from trace_core.storage.base import validate_key

log = logging.getLogger(__name__)

SOURCE_COLUMNS = ("source_task_id", "source_attempt")


class _PointerModel(BaseModel):
    # Unknown fields are ignored (the digest's producers add e.g. lease_token); known ones
    # are checked strictly.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    destination: str
    schema_version: int
    batch_key: str
    content_type: str
    task_id: uuid.UUID = Field(strict=False)
    attempt: int = Field(ge=1)
    row_count: int | None = Field(default=None, ge=0)
    batch_size_bytes: int | None = Field(default=None, ge=0)


@dataclass(frozen=True)
class BufferPointer:
    """A validated buffer message: where the batch is and who published it."""

    destination: Destination
    batch_key: str
    task_id: uuid.UUID
    attempt: int
    row_count: int | None


@dataclass(frozen=True)
class SinkReport:
    """What one ``sink_once`` did. ``errors`` hold one line per failed message (no row data)."""

    received: int = 0
    acked: int = 0
    failed: int = 0
    stale_acks: int = 0
    rows_inserted: int = 0
    rows_duplicate: int = 0
    errors: tuple[str, ...] = field(default=())

    @property
    def idle(self) -> bool:
        return self.received == 0


def parse_pointer(payload: Mapping[str, Any]) -> BufferPointer:
    """Validate a buffer message. Raises ``InvalidPayload`` naming the field at fault.

    Requires ``content_type`` exactly ``application/jsonl``, a registered destination at its
    current ``schema_version``, and ``batch_key`` equal to the key the producer's task
    attempt stages (``batches/{task_id}/{attempt}/{destination}.jsonl``).
    """
    if not isinstance(payload, Mapping):
        raise InvalidPayload("buffer message: must be a JSON object")
    try:
        m = _PointerModel.model_validate(dict(payload))
    except ValidationError as exc:
        err = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p)[:64] for p in err["loc"]) or "message"
        raise InvalidPayload(f"buffer message: {where}: {err['msg']}", field=where) from None
    if m.content_type != BATCH_CONTENT_TYPE:
        raise InvalidPayload(
            f"buffer message: content_type: must be {BATCH_CONTENT_TYPE!r}, "
            f"got {m.content_type[:64]!r}",
            field="content_type",
        )
    dest = DESTINATIONS.get(m.destination)
    if dest is None:
        raise InvalidPayload(
            f"buffer message: destination: unknown destination {m.destination[:64]!r} "
            f"(known: {', '.join(sorted(DESTINATIONS))})",
            field="destination",
        )
    if m.schema_version != dest.schema_version:
        raise InvalidPayload(
            f"buffer message: schema_version: {dest.name} is at version {dest.schema_version}, "
            f"got {m.schema_version}",
            field="schema_version",
        )
    expected = batch_key(m.task_id, m.attempt, dest.name)
    if m.batch_key != expected:
        raise InvalidPayload(
            f"buffer message: batch_key: must be {expected!r} for this task attempt, "
            f"got {m.batch_key[:200]!r}",
            field="batch_key",
        )
    validate_key(m.batch_key)
    return BufferPointer(dest, m.batch_key, m.task_id, m.attempt, m.row_count)


def insert_statement(dest: Destination) -> sql.Composed:
    """``INSERT ... ON CONFLICT (key) DO NOTHING`` for ``dest`` (identifiers quoted)."""
    columns = (*dest.columns, *SOURCE_COLUMNS)
    return sql.SQL(q("sinks", "insert_rows")).format(
        table=sql.Identifier(*dest.schema_table),
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        values=sql.SQL(", ").join(sql.Placeholder(c) for c in columns),
        key=sql.Identifier(dest.key),
    )


def write_rows(
    conn: psycopg.Connection[Any],
    dest: Destination,
    rows: Sequence[SinkRow],
    *,
    task_id: uuid.UUID,
    attempt: int,
) -> int:
    """Upsert every row in ONE transaction; return how many were new (first write wins).

    Raises ``InvalidBatch`` when Postgres refuses the data (its SQLSTATE, never the values);
    other database failures propagate as ``psycopg.Error``.
    """
    if not rows:
        return 0
    params = [_row_params(r, task_id, attempt) for r in rows]
    stmt = insert_statement(dest)
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(stmt, params)
            inserted = cur.rowcount
            if dest.after_write:
                cur.execute(q(*dest.after_write), {"keys": [p[dest.key] for p in params]})
    except (psycopg.DataError, psycopg.IntegrityError) as exc:
        state = exc.diag.sqlstate or "?"
        raise InvalidBatch(
            f"rejected by the database (SQLSTATE {state}, {type(exc).__name__})",
            destination=dest.name,
        ) from None
    return max(0, inserted)


def _row_params(row: SinkRow, task_id: uuid.UUID, attempt: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in row.__class__.model_fields:
        value = getattr(row, name)
        out[name] = Jsonb(value) if isinstance(value, dict | list) else value
    out["source_task_id"] = task_id
    out["source_attempt"] = attempt
    return out


def sink_once(rt: Runtime, *, max_messages: int = 10) -> SinkReport:
    """Receive up to ``max_messages`` pointers from ``BUFFER_QUEUE`` and sink each one.

    Bounded work for a sensor tick. A failing message is nacked with its error (after
    ``sink_retry_delay_seconds``, or a visibility timeout for transient infrastructure
    failures) and never partially written. Raises ``QueueError`` when the queue fails and
    ``DatabaseUnreachable`` when Postgres data is down (received messages then reappear
    after their visibility timeout).
    """
    settings = rt.settings
    messages = rt.queue.receive(
        BUFFER_QUEUE, max_messages, visibility_timeout=settings.visibility_timeout_seconds
    )
    if not messages:
        return SinkReport()
    acked = failed = stale = inserted_total = duplicate_total = 0
    errors: list[str] = []
    with rt.data() as conn:
        for message in messages:
            try:
                inserted, total = _sink_message(rt, conn, message)
            except (TraceError, psycopg.Error) as exc:
                error = _describe(exc)
                transient = _is_transient(exc)
                delay = (
                    settings.visibility_timeout_seconds
                    if transient
                    else settings.sink_retry_delay_seconds
                )
                log.warning(
                    "sink message failed",
                    extra={
                        "message_id": message.message_id,
                        "receive_count": message.receive_count,
                        "error": error,
                        "transient": transient,
                    },
                )
                failed += 1
                errors.append(f"{message.message_id}: {error}")
                try:
                    rt.queue.nack(message, delay_seconds=delay, error=error)
                except StaleReceipt:
                    stale += 1
                continue
            inserted_total += inserted
            duplicate_total += total - inserted
            try:
                rt.queue.ack(message)
                acked += 1
            except StaleReceipt:
                # Written and committed, but redelivered meanwhile: the copy re-inserts nothing.
                stale += 1
    return SinkReport(
        received=len(messages),
        acked=acked,
        failed=failed,
        stale_acks=stale,
        rows_inserted=inserted_total,
        rows_duplicate=duplicate_total,
        errors=tuple(errors),
    )


def _sink_message(rt: Runtime, conn: psycopg.Connection[Any], message: Message) -> tuple[int, int]:
    """Validate, fetch, parse all, then write all. Returns (rows inserted, rows in batch)."""
    pointer = parse_pointer(message.payload)
    data = rt.store.get_bytes(pointer.batch_key, max_bytes=rt.settings.sink_max_batch_bytes)
    rows = parse_jsonl(pointer.destination, data, key=pointer.batch_key)
    if pointer.row_count is not None and pointer.row_count != len(rows):
        # A batch rewritten by an operator before a replay may differ; the object decides.
        log.info(
            "batch row count differs from its pointer",
            extra={
                "batch_key": pointer.batch_key,
                "pointer": pointer.row_count,
                "object": len(rows),
            },
        )
    inserted = write_rows(
        conn, pointer.destination, rows, task_id=pointer.task_id, attempt=pointer.attempt
    )
    log.info(
        "sank batch",
        extra={
            "message_id": message.message_id,
            "destination": pointer.destination.name,
            "batch_key": pointer.batch_key,
            "rows": len(rows),
            "inserted": inserted,
        },
    )
    return inserted, len(rows)


def _is_transient(exc: BaseException) -> bool:
    """Infrastructure trouble (not the message's fault): a missing object is the message's."""
    if isinstance(exc, psycopg.Error):
        return not isinstance(exc, psycopg.DataError | psycopg.IntegrityError)
    return isinstance(exc, RetryableError) and not isinstance(exc, ObjectNotFound)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TraceError):
        return f"{exc.code}: {exc}"
    if isinstance(exc, psycopg.Error):
        return f"database error {type(exc).__name__} (SQLSTATE {exc.sqlstate or '?'})"
    return type(exc).__name__
