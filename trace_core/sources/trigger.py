"""One trigger of a job, exactly once per idempotency key.

``trigger`` writes, in ONE state transaction: the source event
(``state.source_events``, unique on ``(org, job, kind, idempotency_key)``), the run's task
(pinned to the newest committed versions of the job's inputs and its code) and the task's
outbox wake-up. A repeat with the same key and the same body returns the first event and
creates nothing (a redelivered webhook, a double click, a schedule tick evaluated twice); the
same key with a different body is refused (``idempotency_conflict``), since the key would
otherwise hide a different request.

Keys: cron ``cron:{scheduled time}``; webhook: the caller's ``Idempotency-Key`` header; manual:
the caller's ``--key``, or by default ``inputs:{fingerprint of the pinned versions}`` so a
second launch over the same committed data is the same run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from psycopg import Connection
from psycopg.types.json import Jsonb

from trace_core.db.queries import q
from trace_core.errors import SourceRejected, TransformNotFound
from trace_core.transforms.store import TransformRow, get_transform
from trace_core.transforms.tasks import (
    build_payload,
    create_run,
    inputs_fingerprint,
    latest_pins,
    run_task_id,
)

log = logging.getLogger(__name__)

Kind = Literal["cron", "webhook", "manual"]
KINDS: tuple[Kind, ...] = ("cron", "webhook", "manual")
SOURCE_NAMESPACE = uuid.UUID("6a2e9d41-3c7b-4f58-a1d0-9b8c7e6f5d4c")
MAX_KEY_CHARS = 200


@dataclass(frozen=True)
class Triggered:
    """The accepted trigger; ``created`` is False for a repeat of an earlier one."""

    source_event_id: uuid.UUID
    task_id: uuid.UUID
    job: str
    kind: str
    idempotency_key: str
    created: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "source_event_id": str(self.source_event_id),
            "task_id": str(self.task_id),
            "job": self.job,
            "kind": self.kind,
            "idempotency_key": self.idempotency_key,
            "created": self.created,
        }


def check_key(key: str) -> str:
    """Refuse an empty, oversized or non-printable idempotency key. Raises ``SourceRejected``."""
    if not key or len(key) > MAX_KEY_CHARS or not key.isprintable():
        raise SourceRejected(
            f"the idempotency key must be 1-{MAX_KEY_CHARS} printable characters",
            code="bad_idempotency_key",
            status=400,
        )
    return key


def enabled(t: TransformRow, kind: Kind) -> bool:
    return (
        t.enabled and {"cron": t.cron is not None, "webhook": t.webhook, "manual": t.manual}[kind]
    )


def source_event_id(org_id: str | uuid.UUID, job: str, kind: str, key: str) -> uuid.UUID:
    return uuid.uuid5(SOURCE_NAMESPACE, f"{org_id}:{job}:{kind}:{key}")


def _body_json(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return None  # kept as its digest only


def trigger(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    job: str,
    kind: Kind,
    *,
    idempotency_key: str | None = None,
    body: bytes = b"",
    max_attempts: int = 3,
) -> Triggered:
    """Record one trigger of ``job`` and create its run, atomically (see the module docstring).

    Raises ``SourceRejected`` (nothing written) for an unknown job (404), a trigger the job
    does not enable (409), inputs with no committed version yet (409), a bad key (400) or a
    key reused with another body (409).
    """
    body_sha = hashlib.sha256(body).hexdigest()
    with conn.transaction():
        try:
            t = get_transform(conn, org_id, job)
        except TransformNotFound:
            raise SourceRejected(
                f"no transform job named {job!r}", code="job_not_found", status=404
            ) from None
        if not enabled(t, kind):
            raise SourceRejected(
                f"job {job!r} does not enable the {kind} trigger",
                code="trigger_not_enabled",
                status=409,
            )
        pinned = latest_pins(conn, org_id, t)
        if pinned is None:
            raise SourceRejected(
                f"job {job!r}: an input has no committed version yet ({', '.join(t.inputs)})",
                code="no_input_data",
                status=409,
            )
        grants, start, end = pinned
        key = check_key(
            idempotency_key
            if idempotency_key is not None
            else f"inputs:{inputs_fingerprint(grants)}"
        )
        params = {
            "org_id": uuid.UUID(str(org_id)),
            "job_name": job,
            "kind": kind,
            "idempotency_key": key,
        }
        event_id = source_event_id(org_id, job, kind, key)
        task_id = run_task_id(t.transform_id, f"{kind}:{key}")
        inserted = conn.execute(
            q("transforms", "insert_source_event"),
            {
                **params,
                "source_event_id": event_id,
                "body_sha256": body_sha,
                "body": Jsonb(_body_json(body)),
                "task_id": task_id,
            },
        ).fetchone()
        if inserted is None:  # the key was seen: the same request again, or a conflicting one
            row = conn.execute(q("transforms", "get_source_event"), params).fetchone()
            assert row is not None
            if row[1] != body_sha:
                raise SourceRejected(
                    f"idempotency key {key!r} was already used for a different request",
                    code="idempotency_conflict",
                    status=409,
                )
            return Triggered(row[0], row[2], job, kind, key, created=False)
        payload = build_payload(
            t,
            grants=grants,
            range_start=start,
            range_end=end,
            trigger=kind,
            source={"source_event_id": str(event_id), "kind": kind, "idempotency_key": key},
        )
        create_run(conn, task_id, payload, max_attempts=max_attempts)
    log.info(
        "source triggered a run",
        extra={"job": job, "kind": kind, "task_id": str(task_id), "source_event": str(event_id)},
    )
    return Triggered(event_id, task_id, job, kind, key, created=True)


def count_events(conn: Connection[Any], org_id: str | uuid.UUID, job: str) -> dict[str, int]:
    """Source events of a job by kind."""
    rows = conn.execute(
        q("transforms", "count_source_events"), {"org_id": uuid.UUID(str(org_id)), "job_name": job}
    ).fetchall()
    return {str(k): int(n) for k, n in rows}
