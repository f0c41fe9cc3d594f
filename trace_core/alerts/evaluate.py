"""The ``alert_evaluate`` operator: run an alert's condition, publish its events as a batch.

Flow (the worker holds the lease and heartbeats): post the condition to the Query Service's
``/v1/task-query`` with the attempt's capability token (which reads exactly the pinned
versions in the payload's ``grants``) -> turn each result row into an ``AlertEventRow`` whose
``dedupe_key`` comes from the alert's template -> ``stage_batch`` -> return a ``Completion``
whose commit fences the attempt, ``publish_batch``es and finishes the task in one state
transaction. A stale attempt fails the fence, so its staged batch is never published; a
retry of the same evaluation reads the same pinned data and yields the same dedupe keys.

Errors: Query Service unreachable, 5xx, timeout or expired token -> ``QueryServiceUnavailable``
(retryable); refused or failing SQL -> ``QueryError`` (fatal); rows that cannot become
events -> ``AlertResultInvalid`` (fatal); the service saying the attempt is no longer
current -> ``StaleAttempt``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
from psycopg import Connection
from pydantic import BeforeValidator, Field, Strict

from trace_core.alerts.spec import render_template
from trace_core.errors import (
    AccessDenied,
    AlertResultInvalid,
    QueryError,
    QueryServiceUnavailable,
    StaleAttempt,
)
from trace_core.operators.base import Completion, OperatorContext
from trace_core.operators.payload import TaskPayload
from trace_core.settings import Settings
from trace_core.tasks import lifecycle

log = logging.getLogger(__name__)

OPERATOR = "alert_evaluate"
DESTINATION = "alert_events"
MAX_EVENTS_PER_EVALUATION = 1000
# Result columns that fill the event's own fields, when the condition returns them.
BLOCK_HASH_COLUMNS = ("block_hash",)
TX_HASH_COLUMNS = ("transaction_hash", "tx_hash")
TIME_COLUMNS = ("event_time", "timestamp", "block_timestamp")
_RETRYABLE_STATUS = frozenset({401, 408, 429})


NonEmpty = Annotated[str, Strict(), Field(min_length=1)]


class EvaluationPayload(TaskPayload):
    """An ``alert_evaluate`` task payload (a snapshot of the definition, built by ``routing``;
    never the channels: webhook URLs stay out of task payloads). ``grants`` pin exactly the
    dataset versions the evaluation may read."""

    alert_id: uuid.UUID
    alert_name: NonEmpty
    severity: NonEmpty
    condition: NonEmpty
    dedupe_key: NonEmpty
    chain_id: Annotated[int, Strict()]
    trigger: NonEmpty
    source: Annotated[dict[str, Any], BeforeValidator(lambda v: v or {})] = Field(
        default_factory=dict
    )
    grants: list[dict[str, str]] = Field(default_factory=list)
    # a Python alert: the stored UDF bundle run over the condition's rows (None: SQL alert)
    udf_sha256: str | None = None
    # False when ``condition`` is Trace's own ``SELECT *`` of the single read (no user SQL)
    user_condition: bool = True


# --- the query ---------------------------------------------------------------------------


def task_query(settings: Settings, token: str, sql: str, *, max_rows: int) -> dict[str, Any]:
    """POST ``sql`` to ``/v1/task-query`` with a capability token; return the response JSON.

    Raises ``QueryServiceUnavailable`` (retryable) or ``QueryError`` (fatal; code
    ``stale_attempt`` when the token's attempt is no longer current).
    """
    url = settings.resolved_query_url().rstrip("/") + "/v1/task-query"
    try:
        response = httpx.post(
            url,
            json={"sql": sql, "max_rows": max_rows},
            headers={"Authorization": f"Bearer {token}"},
            timeout=settings.query_timeout_seconds + 30,
            follow_redirects=False,
        )
    except httpx.TransportError as exc:
        raise QueryServiceUnavailable(
            f"cannot reach the Query Service: {type(exc).__name__}"
        ) from exc
    if response.status_code == 200:
        try:
            body: dict[str, Any] = response.json()
        except ValueError as exc:
            raise QueryServiceUnavailable("the Query Service answered invalid JSON") from exc
        return body
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", f"HTTP {response.status_code}"
    status = response.status_code
    if status >= 500 or status in _RETRYABLE_STATUS:
        raise QueryServiceUnavailable(f"Query Service HTTP {status} ({code}): {message}")
    raise QueryError(f"alert condition failed ({code}): {message}", code=code, status=status)


# --- rows -> events (pure) ----------------------------------------------------------------


def _event_time(value: Any, fallback: datetime) -> datetime:
    if value is None:
        return fallback
    if isinstance(value, bool):
        raise AlertResultInvalid("event time column holds a boolean")
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            if value.isdigit():
                return datetime.fromtimestamp(int(value), UTC)
            parsed = datetime.fromisoformat(value)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise AlertResultInvalid("the event time column does not hold a timestamp")


def _block_number(row: Mapping[str, Any]) -> int:
    if "block_number" not in row:
        raise AlertResultInvalid(
            "the alert condition must return a block_number column", field="condition"
        )
    value = row["block_number"]
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AlertResultInvalid("block_number must be a non-negative integer", field="condition")
    return value


def _first(row: Mapping[str, Any], names: Sequence[str]) -> str | None:
    for name in names:
        if row.get(name) is not None:
            return str(row[name])
    return None


def events_from_result(
    p: EvaluationPayload,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    evaluated_at: datetime,
) -> list[dict[str, Any]]:
    """One ``alert_events`` row per result row, in result order; duplicate dedupe keys in one
    result collapse to the first. ``evaluated_at`` is the event time of rows without a time
    column. Raises ``AlertResultInvalid``."""
    if len(set(columns)) != len(columns):
        raise AlertResultInvalid("the alert condition returns duplicate column names")
    events: dict[str, dict[str, Any]] = {}
    for values in rows:
        row = dict(zip(columns, values, strict=True))
        key = render_template(p.dedupe_key, row)
        if key in events:
            continue
        events[key] = {
            "dedupe_key": key,
            "alert_name": p.alert_name,
            "severity": p.severity,
            "chain_id": p.chain_id,
            "block_number": _block_number(row),
            "block_hash": _first(row, BLOCK_HASH_COLUMNS),
            "tx_hash": _first(row, TX_HASH_COLUMNS),
            "event_time": _event_time(_first_value(row, TIME_COLUMNS), evaluated_at),
            "payload": {
                "alert_id": str(p.alert_id),
                "trigger": p.trigger,
                "source": dict(p.source),
                "row": row,
            },
        }
    return list(events.values())


def events_from_records(
    p: EvaluationPayload, records: Sequence[Mapping[str, Any]], *, evaluated_at: datetime
) -> list[dict[str, Any]]:
    """``events_from_result`` of a Python alert's returned dicts (keys are its columns)."""
    if not all(isinstance(r, Mapping) for r in records):
        raise AlertResultInvalid("a Python alert must return a list of dicts", field="udf")
    if len(records) > MAX_EVENTS_PER_EVALUATION:
        raise AlertResultInvalid(
            f"the alert UDF returned more than {MAX_EVENTS_PER_EVALUATION} events", field="udf"
        )
    columns = sorted({str(k) for r in records for k in r})
    rows = [[r.get(c) for c in columns] for r in records]
    return events_from_result(p, columns, rows, evaluated_at=evaluated_at)


def evaluate_udf(ctx: OperatorContext, p: EvaluationPayload) -> list[dict[str, Any]]:
    """A Python alert: the condition's rows (read in process through the Query Service with
    the attempt's token) -> ``main(rows) -> list[dict]`` in the UDF sandbox -> events."""
    from trace_core.transforms.inputs import invoker, query_service, run_sql, to_ipc
    from trace_core.udf import UdfInvocationPayload
    from trace_core.udf.bundles import get_bundle

    assert p.udf_sha256 is not None
    lease = ctx.lease
    try:
        with query_service(ctx.runtime, user_sql=p.user_condition) as service:
            rows = run_sql(service, ctx.capability_token, p.condition)
    except AccessDenied as exc:
        if exc.code == "stale_attempt":
            raise StaleAttempt(lease.task_id, lease.attempt, "attempt not current") from exc
        raise
    ctx.check_lease()
    result = invoker(ctx.runtime).invoke(
        UdfInvocationPayload(
            kind="alert",
            entry="main",
            filename=f"{p.alert_name}.py",
            source=get_bundle(ctx.runtime, p.udf_sha256),
            bundle_sha256=p.udf_sha256,
            tables={"rows": to_ipc(rows)},
            task_id=str(lease.task_id),
            attempt=lease.attempt,
            reuse_scope=f"{ctx.runtime.settings.org_id}/alert/{p.alert_name}",
        )
    )
    return events_from_records(p, result.events, evaluated_at=datetime.now(UTC))


def _first_value(row: Mapping[str, Any], names: Sequence[str]) -> Any:
    return next((row[n] for n in names if row.get(n) is not None), None)


def evaluate_condition(
    settings: Settings, p: EvaluationPayload, token: str, *, evaluated_at: datetime
) -> list[dict[str, Any]]:
    """Query the condition and build its events. Raises ``AlertResultInvalid`` when the result
    has more than ``MAX_EVENTS_PER_EVALUATION`` rows (events are never dropped silently)."""
    body = task_query(settings, token, p.condition, max_rows=MAX_EVENTS_PER_EVALUATION)
    if body.get("truncated") or body.get("export"):
        raise AlertResultInvalid(
            f"the alert condition returned more than {MAX_EVENTS_PER_EVALUATION} rows; "
            "narrow it (or aggregate) so each row is one event"
        )
    columns = [str(c["name"]) if isinstance(c, Mapping) else str(c) for c in body["columns"]]
    return events_from_result(p, columns, body["rows"], evaluated_at=evaluated_at)


# --- the operator ------------------------------------------------------------------------


def alert_evaluate_operator(ctx: OperatorContext) -> Completion:
    """Worker entry point: query and stage under the worker's heartbeat; publish the batch
    and finish the task in the fenced completion transaction."""
    from trace_core.sinks.publish import publish_batch, stage_batch

    lease = ctx.lease
    p = EvaluationPayload.parse(lease.payload)
    try:
        if p.udf_sha256 is not None:
            events = evaluate_udf(ctx, p)
        else:
            events = evaluate_condition(
                ctx.runtime.settings, p, ctx.capability_token, evaluated_at=datetime.now(UTC)
            )
    except QueryError as exc:
        if exc.code == "stale_attempt":
            raise StaleAttempt(
                lease.task_id, lease.attempt, "Query Service: attempt not current"
            ) from exc
        raise
    ctx.check_lease()
    ref = None
    if events:
        ref = stage_batch(
            ctx.runtime.store,
            destination=DESTINATION,
            task_id=lease.task_id,
            attempt=lease.attempt,
            rows=events,
        )
    outputs: dict[str, Any] = {
        "alert_name": p.alert_name,
        "events": len(events),
        "batch_key": ref.batch_key if ref else None,
    }
    log.info(
        "alert evaluated",
        extra={
            "task_id": str(lease.task_id),
            "attempt": lease.attempt,
            "alert": p.alert_name,
            "events": len(events),
        },
    )

    def commit(conn: Connection[Any]) -> dict[str, Any]:
        lifecycle.fence(conn, lease)
        if ref is not None:
            publish_batch(conn, ref, task_id=lease.task_id, attempt=lease.attempt)
        lifecycle.finish_succeeded(conn, lease, outputs)
        return outputs

    return Completion(outputs=outputs, commit=commit)
