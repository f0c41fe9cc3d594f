"""Downstream wake-ups: committed dataset versions become ``alert_evaluate`` tasks.

1. The commit (``datasets.commit.commit_version``, inside the completion transaction) writes a
   ``dataset_version_committed`` event on the outbox topic ``dataset_events``; its outbox id is
   derived from the version, so a replay adds nothing. A chain_sync range's event names its
   job, and so does an analytics output's (``analytics.output``: the job's own dataset
   ``analytics_<name>__<job tag>``, which its alerts read as ``analytics_<name>``); the hot
   compactor's names none, and routing finds the jobs that read it: those with a ``hot:``
   block on the chain (and, for an ``analytics_<name>`` version committed before outputs were
   per job, those whose ``analytics:`` block produces it).
2. ``route_dataset_events`` (each dispatcher tick) receives those events and, for every
   enabled ``on_commit`` alert reading that stream, creates an evaluation task (and its
   wake-up) in one state transaction, then acks. The task id is ``uuid5(alert_id, version)``:
   a duplicated event, or a redelivery after a crash before the ack, creates nothing twice.
   Other events (``hot_range_committed`` from the block follower, ...) are acked and ignored.
3. ``schedule_due_alerts`` creates evaluations of ``schedule_seconds`` alerts, one per
   schedule slot, over the newest committed versions of the streams they read.

An evaluation's grants pin exactly the versions it may read. An alert reading several
streams is evaluated once every stream covers the committed range (the commit that completes
the coverage creates the task); events are deduplicated by ``dedupe_key`` in any case.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from psycopg import Connection

from trace_core.alerts.evaluate import OPERATOR as EVALUATE_OPERATOR
from trace_core.alerts.evaluate import EvaluationPayload
from trace_core.chain_sync import store as chain_sync_store
from trace_core.chain_sync.analytics_spec import (
    OUTPUT_PREFIX,
    job_dataset_key,
    output_keys,
    output_relation,
)
from trace_core.datasets import events, registry
from trace_core.datasets.events import DATASET_EVENTS, VERSION_COMMITTED
from trace_core.db.queries import q
from trace_core.errors import InvalidPayload, TraceError
from trace_core.queue.base import Message
from trace_core.runtime import Runtime
from trace_core.tasks.lifecycle import create_task
from trace_core.tenancy.acting import act_in_transaction, dataset_org
from trace_core.transforms import routing as transform_routing

log = logging.getLogger(__name__)

EVALUATION_NAMESPACE = uuid.UUID("b5f1e2a4-7d0c-4b8e-9a61-2f4c8d3e5a17")
# Pins travel inside the capability token (an HTTP header): keep a scheduled evaluation's
# grant list well under the server's header limits.
MAX_SCHEDULE_PINS = 64
ROUTE_BATCH = 100
_EVENT_FIELDS = (
    "dataset_key",
    "chain_id",
    "dataset_uuid",
    "dataset_version",
    "manifest_key",
    "range_start",
    "range_end",
)


def evaluation_task_id(alert_id: uuid.UUID, trigger_key: str) -> uuid.UUID:
    """Deterministic id of one evaluation: ``trigger_key`` is the dataset version that
    triggered it, or ``schedule:{slot}``."""
    return uuid.uuid5(EVALUATION_NAMESPACE, f"alert_evaluate:{alert_id}:{trigger_key}")


# --- producing events ----------------------------------------------------------------------


def version_committed_event(
    payload: Mapping[str, Any], outputs: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``dataset_version_committed`` event of a chain_sync range (task payload + the
    committed version in ``outputs``)."""
    return events.version_committed_event(outputs, job_name=str(payload["job_name"]))


# --- routing -------------------------------------------------------------------------------


def _pin(rec: registry.VersionRecord) -> dict[str, str]:
    return {
        "dataset_uuid": str(rec.dataset_uuid),
        "dataset_version": str(rec.dataset_version),
        "manifest_key": rec.manifest_key,
    }


def _evaluation_payload(
    alert: Mapping[str, Any],
    chain_id: int,
    trigger: str,
    source: dict[str, Any],
    grants: list[dict[str, str]],
) -> dict[str, Any]:
    """The task payload: a snapshot of what evaluation needs (never the channels: webhook
    URLs stay out of task payloads), so every attempt evaluates the same definition."""
    spec = alert["spec"]
    return EvaluationPayload(
        alert_id=alert["alert_id"],
        alert_name=alert["name"],
        severity=spec["severity"],
        condition=spec.get("condition") or f'SELECT * FROM "{spec["reads"][0]}"',
        udf_sha256=spec.get("udf_sha256"),
        user_condition=spec.get("condition") is not None,
        dedupe_key=spec["dedupe_key"],
        chain_id=chain_id,
        trigger=trigger,
        source=source,
        grants=grants,
    ).to_json()


def _parse_event(payload: Mapping[str, Any]) -> dict[str, Any]:
    missing = [f for f in _EVENT_FIELDS if f not in payload]
    if missing:
        raise InvalidPayload(f"{VERSION_COMMITTED} event lacks {', '.join(missing)}")
    try:
        job_name = payload.get("job_name")
        return {
            "job_name": None if job_name is None else str(job_name),
            "dataset_key": str(payload["dataset_key"]),
            "chain_id": int(payload["chain_id"]),
            "dataset_uuid": str(uuid.UUID(str(payload["dataset_uuid"]))),
            "dataset_version": str(uuid.UUID(str(payload["dataset_version"]))),
            "manifest_key": str(payload["manifest_key"]),
            "range_start": int(payload["range_start"]),
            "range_end": int(payload["range_end"]),
        }
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"malformed {VERSION_COMMITTED} event: {exc}") from None


def route_event(
    conn: Connection[Any], org_id: str | uuid.UUID, payload: Mapping[str, Any], *, max_attempts: int
) -> int:
    """Create the evaluations (and transform runs) one event triggers, in the caller's
    transaction; returns how many were new. Events other than ``dataset_version_committed`` trigger nothing. An event without
    a job (a version the hot compactor or an analytics run committed) is routed for every job
    of ``_jobs_of_unowned_version``. Raises ``InvalidPayload`` for a malformed version event."""
    if payload.get("event") != VERSION_COMMITTED:
        return 0
    ev = _parse_event(payload)
    names = (
        [ev["job_name"]]
        if ev["job_name"] is not None
        else _jobs_of_unowned_version(conn, org_id, ev["chain_id"], ev["dataset_key"])
    )
    created = 0
    for name in names:
        job_ev = {**ev, "job_name": name}
        created += _route_for_job(conn, org_id, job_ev, max_attempts=max_attempts)
        # transform runs partitioned like this input (trace_core.transforms.routing)
        created += transform_routing.route_version(conn, org_id, job_ev, max_attempts=max_attempts)
    return created


def _jobs_of_unowned_version(
    conn: Connection[Any], org_id: str | uuid.UUID, chain_id: int, dataset_key: str
) -> list[str]:
    """Jobs whose alerts may read a version committed outside a job, by name: the enabled
    jobs with a ``hot:`` block on its chain (the hot compactor's versions), and the jobs on its
    chain whose ``analytics:`` block produces ``dataset_key`` (analytics outputs)."""
    names = {
        job.name
        for job in chain_sync_store.list_hot_jobs(conn, org_id, enabled_only=True)
        if job.chain_id == chain_id
    }
    if dataset_key.startswith(OUTPUT_PREFIX):
        rows = conn.execute(
            q("alerts", "analytics_jobs_on_chain"),
            {"org_id": uuid.UUID(str(org_id)), "chain_id": chain_id},
        ).fetchall()
        names.update(name for name, analytics in rows if dataset_key in output_keys(analytics))
    return sorted(names)


def _route_for_job(
    conn: Connection[Any], org_id: str | uuid.UUID, ev: dict[str, Any], *, max_attempts: int
) -> int:
    relation = output_relation(ev["dataset_key"])  # a job's analytics output: analytics_<name>
    alerts = conn.execute(
        q("alerts", "on_commit_alerts"),
        {"org_id": uuid.UUID(str(org_id)), "job_name": ev["job_name"], "dataset_key": relation},
    ).fetchall()
    created = 0
    for aid, name, reads, spec in alerts:
        grants = [{k: ev[k] for k in ("dataset_uuid", "dataset_version", "manifest_key")}]
        covered = True
        for key in reads:
            if key == relation:
                continue
            stored = job_dataset_key(ev["job_name"], key)
            recs = [
                r
                for r in registry.versions_for_stream(conn, org_id, ev["chain_id"], stored)
                if r.range_end > ev["range_start"] and r.range_start < ev["range_end"]
            ]
            if registry.missing_ranges(recs, ev["range_start"], ev["range_end"]):
                covered = False  # the commit that completes the coverage routes it
                break
            grants.extend(_pin(r) for r in recs)
        if not covered:
            continue
        source = {
            k: ev[k]
            for k in ("job_name", "dataset_key", "dataset_version", "range_start", "range_end")
        }
        alert = {"alert_id": aid, "name": name, "spec": spec}
        task_id = evaluation_task_id(aid, ev["dataset_version"])
        if create_task(
            conn,
            task_id=task_id,
            operator=EVALUATE_OPERATOR,
            payload=_evaluation_payload(alert, ev["chain_id"], "on_commit", source, grants),
            max_attempts=max_attempts,
        ):
            created += 1
            log.info(
                "alert evaluation created",
                extra={
                    "alert": name,
                    "task_id": str(task_id),
                    "dataset_version": ev["dataset_version"],
                },
            )
    return created


def route_dataset_events(rt: Runtime, *, max_messages: int = ROUTE_BATCH) -> int:
    """Receive up to ``max_messages`` dataset events and route each in its own state
    transaction, acking after it commits. Returns the evaluations created.

    A malformed event is logged and acked (it can never route); a database failure leaves
    the message unacked, so it is redelivered (and dead-lettered after its receives).
    """
    messages = rt.queue.receive(
        DATASET_EVENTS, max_messages, visibility_timeout=rt.settings.visibility_timeout_seconds
    )
    created = 0
    done: list[Message] = []
    for msg in messages:
        try:
            with rt.state() as conn, conn.transaction():
                # routed as the org of the event's dataset (every org's events share the topic)
                org = _event_org(conn, msg.payload) or rt.settings.org_id
                act_in_transaction(conn, org)
                created += route_event(
                    conn, org, msg.payload, max_attempts=rt.settings.max_attempts
                )
        except InvalidPayload as exc:
            log.warning(
                "dropping malformed dataset event",
                extra={"message_id": msg.message_id, "error": str(exc)},
            )
        except TraceError as exc:
            log.warning(
                "routing a dataset event failed; it will be redelivered",
                extra={"message_id": msg.message_id, "error": str(exc)},
            )
            continue
        done.append(msg)
    if done:
        rt.queue.ack_batch(done)
    return created


def _event_org(conn: Connection[Any], payload: Mapping[str, Any]) -> uuid.UUID | None:
    """The org of an event's dataset (None: no dataset named, or none such)."""
    dataset = payload.get("dataset_uuid")
    try:
        return dataset_org(conn, uuid.UUID(str(dataset))) if dataset else None
    except ValueError:
        return None  # malformed: route_event names the problem


# --- schedules -----------------------------------------------------------------------------


def _schedule_grants(
    conn: Connection[Any], org_id: str | uuid.UUID, job: str, chain_id: int, reads: list[str]
) -> list[dict[str, str]] | None:
    """Pins of the newest committed versions of each stream or of the job's analytics output
    (None if one has none yet)."""
    per_stream = max(1, MAX_SCHEDULE_PINS // len(reads))
    grants: list[dict[str, str]] = []
    for key in reads:
        recs = registry.versions_for_stream(conn, org_id, chain_id, job_dataset_key(job, key))
        if not recs:
            return None
        grants.extend(_pin(r) for r in recs[-per_stream:])
    return grants


def schedule_due_alerts(
    conn: Connection[Any], org_id: str | uuid.UUID, *, max_attempts: int, limit: int = 50
) -> int:
    """Create one evaluation per due ``schedule_seconds`` alert (task id from the schedule
    slot) and move its next due time; one transaction on ``conn``. Returns tasks created."""
    created = 0
    with conn.transaction():
        due = conn.execute(
            q("alerts", "claim_due_schedules"), {"org_id": uuid.UUID(str(org_id)), "limit": limit}
        ).fetchall()
        for aid, name, job_name, reads, spec, _seconds, slot in due:
            conn.execute(q("alerts", "advance_schedule"), {"alert_id": aid})
            try:
                job = chain_sync_store.get_job(conn, org_id, job_name)
            except TraceError as exc:
                log.warning("scheduled alert skipped", extra={"alert": name, "error": str(exc)})
                continue
            grants = _schedule_grants(conn, org_id, job_name, job.chain_id, list(reads))
            if grants is None:
                log.info("scheduled alert skipped: a stream has no data yet", extra={"alert": name})
                continue
            alert = {"alert_id": aid, "name": name, "spec": spec}
            source = {"job_name": job_name, "slot": int(slot)}
            if create_task(
                conn,
                task_id=evaluation_task_id(aid, f"schedule:{slot}"),
                operator=EVALUATE_OPERATOR,
                payload=_evaluation_payload(alert, job.chain_id, "schedule", source, grants),
                max_attempts=max_attempts,
            ):
                created += 1
    return created
