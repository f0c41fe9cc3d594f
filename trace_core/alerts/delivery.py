"""Alert delivery: send each new alert event once per channel, with retries and rate limits.

``deliver_once`` is one bounded step (the ``trace_alert_delivery`` sensor calls it each tick):

1. Plan: every recent event (``alert_delivery_max_age_seconds``) of a defined alert that has
   no delivery yet gets one ``data.alert_deliveries`` row per channel of its alert
   (``delivery_id = uuid5(dedupe_key, channel_key)``, ``ON CONFLICT DO NOTHING``).
2. Claim: due rows (``pending`` past ``next_attempt_at``, or ``sending`` whose lease expired
   because a sender died) are locked ``FOR UPDATE SKIP LOCKED``; each channel gets at most
   ``rate_limit_per_minute`` attempts per rolling minute; claimed rows become ``sending``.
3. Send outside any transaction, each on its channel (``alerts.send.Senders``): webhooks get
   one JSON POST with ``Idempotency-Key: <delivery_id>``, Slack a message with blocks,
   PagerDuty an Events API v2 trigger whose ``dedup_key`` is the event's dedupe key, email one
   SMTP transaction (``alerts.smtp``), SMS one SNS publish (``alerts.sns``), the log channel
   one structured line. Delivered -> never sent again; retryable failures (408/425/429/5xx,
   network errors, SMTP 4xx, SNS throttling) -> retry with exponential backoff
   (``Retry-After`` honoured up to the cap); permanent ones -> ``failed``; after
   ``max_attempts`` -> ``failed``. A failed delivery is a dead letter
   (``trace-lite dlq list --queue alert_deliveries``) until replayed or dismissed.
4. Record: each attempt is a ``data.alert_delivery_attempts`` row (outcome, HTTP or SMTP
   status, short error). Errors never carry the URL (tokens live in paths and queries), request or
   response bodies, or headers; the outcome update is fenced by the claimed attempt number.

A sender that dies mid-request leaves the row ``sending`` until its lease expires, then it is
sent again with the same ``Idempotency-Key``: delivery is at-least-once, deduplicable by the
receiver. HTTP destinations resolving to link-local/metadata, multicast or reserved
addresses are refused; loopback/private ones only when ``alert_webhook_allow_private``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import httpx
from psycopg import Connection
from psycopg.rows import dict_row

from trace_core.alerts.channel_spec import Channel
from trace_core.alerts.outcome import Outcome, SendResult
from trace_core.alerts.send import Senders
from trace_core.alerts.spec import AlertSpec
from trace_core.alerts.store import list_alerts
from trace_core.db.queries import q
from trace_core.errors import TraceError
from trace_core.queue.base import BUFFER_QUEUE
from trace_core.runtime import Runtime
from trace_core.tasks.retry import RetryPolicy
from trace_core.tenancy.acting import orgs_with_work

log = logging.getLogger(__name__)

DELIVERY_NAMESPACE = uuid.UUID("0e9c7b1d-5a43-4f6e-8d2b-c4a1f7e3b985")
# > the longest send: an HTTP timeout (30 s max), an SMTP exchange (a few commands of at most
# TRACE_SMTP_TIMEOUT_SECONDS, 20 s max), an SNS call (10 s connect + 10 s read)
LEASE_SECONDS = 90
MAX_SENDERS = 8
_OUTCOME_OF_STATUS: dict[str, Outcome] = {
    "delivered": "delivered",
    "pending": "retry",
    "failed": "failed",
}


def delivery_id(dedupe_key: str, channel_key: str) -> uuid.UUID:
    """Deterministic id of one event's delivery on one channel (the Idempotency-Key)."""
    return uuid.uuid5(DELIVERY_NAMESPACE, f"{dedupe_key}\x1f{channel_key}")


@dataclass
class DeliveryReport:
    planned: int = 0
    attempted: int = 0
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    rate_limited: int = 0

    @property
    def did_work(self) -> bool:
        return bool(self.planned or self.attempted or self.failed)

    def summary(self) -> str:
        return (
            f"planned={self.planned} attempted={self.attempted} delivered={self.delivered} "
            f"retried={self.retried} failed={self.failed} rate_limited={self.rate_limited}"
        )


@dataclass
class _Job:
    """One claimed delivery and what is needed to send it."""

    delivery_id: uuid.UUID
    dedupe_key: str
    alert_name: str
    channel_key: str
    attempt: int
    max_attempts: int
    started_at: datetime
    channel: Channel | None = None
    event: dict[str, Any] = field(default_factory=dict)
    result: SendResult | None = None
    duration_ms: int = 0


# --- pure decisions -----------------------------------------------------------------------


def next_step(
    result: SendResult, *, attempt: int, max_attempts: int, policy: RetryPolicy
) -> tuple[Literal["delivered", "pending", "failed"], float]:
    """The delivery's next status and, for a retry, its delay in seconds."""
    if result.outcome == "delivered":
        return "delivered", 0.0
    if result.outcome == "failed" or attempt >= max_attempts:
        return "failed", 0.0
    delay = policy.delay(attempt)
    if result.retry_after is not None:
        delay = max(delay, min(result.retry_after, policy.max_seconds))
    return "pending", delay


# --- the step -----------------------------------------------------------------------------


def _definitions(rt: Runtime) -> dict[str, AlertSpec]:
    with rt.state() as conn:
        return {row.name: row.model() for row in list_alerts(conn, rt.settings.org_id)}


def plan_deliveries(
    conn: Connection[Any],
    specs: Mapping[str, AlertSpec],
    *,
    org_id: str | uuid.UUID,
    max_attempts: int,
    max_age_seconds: int,
    limit: int,
) -> int:
    """Create the delivery rows of up to ``limit`` unplanned events of ``org_id`` (whose alerts
    ``specs`` are; one per channel), in one transaction on the data database. Returns the rows
    created."""
    if not specs:
        return 0
    created = 0
    with conn.transaction():
        events = conn.execute(
            q("alerts", "events_to_plan"),
            {
                "names": sorted(specs),
                "org_id": str(org_id),
                "max_age_seconds": max_age_seconds,
                "limit": limit,
            },
        ).fetchall()
        for dedupe_key, alert_name in events:
            for channel in specs[alert_name].channels:
                cur = conn.execute(
                    q("alerts", "insert_delivery"),
                    {
                        "delivery_id": delivery_id(dedupe_key, channel.key),
                        "dedupe_key": dedupe_key,
                        "alert_name": alert_name,
                        "channel_key": channel.key,
                        "channel_kind": channel.kind,
                        "max_attempts": max_attempts,
                    },
                )
                created += cur.rowcount
    return created


def _record(
    conn: Connection[Any], job: _Job, result: SendResult, status: str, delay: float
) -> bool:
    """Write the attempt row and the delivery's outcome (fenced by attempt). False if stale."""
    outcome = _OUTCOME_OF_STATUS[status]
    with conn.transaction():
        conn.execute(
            q("alerts", "insert_attempt"),
            {
                "delivery_id": job.delivery_id,
                "attempt": job.attempt,
                "channel_key": job.channel_key,
                "started_at": job.started_at,
                "outcome": outcome,
                "status_code": result.status_code,
                "error": result.error,
                "duration_ms": job.duration_ms,
            },
        )
        cur = conn.execute(
            q("alerts", "finish_delivery"),
            {
                "delivery_id": job.delivery_id,
                "attempt": job.attempt,
                "status": status,
                "delay_seconds": float(delay),
                "status_code": result.status_code,
                "error": result.error,
            },
        )
    return cur.rowcount == 1


def _claim(
    conn: Connection[Any],
    specs: Mapping[str, AlertSpec],
    *,
    org_id: str | uuid.UUID,
    limit: int,
    report: DeliveryReport,
) -> list[_Job]:
    """Lease up to ``limit`` due deliveries of ``org_id`` within each channel's rate limit."""
    jobs: list[_Job] = []
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        due = cur.execute(
            q("alerts", "lock_due_deliveries"), {"org_id": str(org_id), "limit": limit * 4}
        ).fetchall()
        if not due:
            return []
        keys = sorted({r["channel_key"] for r in due})
        used = dict(
            conn.execute(
                q("alerts", "recent_attempts_per_channel"), {"channel_keys": keys}
            ).fetchall()
        )
        for row in due:
            if len(jobs) >= limit:
                break
            spec = specs.get(row["alert_name"])
            channel = spec.channel(row["channel_key"]) if spec else None
            if row["status"] == "sending":
                # the previous sender died mid-request: its attempt has no known outcome
                cur.execute(
                    q("alerts", "insert_attempt"),
                    {
                        "delivery_id": row["delivery_id"],
                        "attempt": row["attempts"],
                        "channel_key": row["channel_key"],
                        "started_at": row["last_attempt_at"],
                        "outcome": "retry",
                        "status_code": None,
                        "error": "no outcome recorded before the send lease expired",
                        "duration_ms": 0,
                    },
                )
                if row["attempts"] >= row["max_attempts"]:
                    cur.execute(
                        q("alerts", "finish_delivery"),
                        {
                            "delivery_id": row["delivery_id"],
                            "attempt": row["attempts"],
                            "status": "failed",
                            "delay_seconds": 0.0,
                            "status_code": None,
                            "error": "attempts exhausted (last send had no recorded outcome)",
                        },
                    )
                    report.failed += 1
                    continue
            limit_per_minute = channel.rate_limit_per_minute if channel is not None else None
            if limit_per_minute is not None:
                if used.get(row["channel_key"], 0) >= limit_per_minute:
                    report.rate_limited += 1
                    continue
                used[row["channel_key"]] = used.get(row["channel_key"], 0) + 1
            leased = cur.execute(
                q("alerts", "lease_delivery"),
                {"delivery_id": row["delivery_id"], "lease_seconds": LEASE_SECONDS},
            ).fetchone()
            assert leased is not None
            jobs.append(
                _Job(
                    delivery_id=row["delivery_id"],
                    dedupe_key=row["dedupe_key"],
                    alert_name=row["alert_name"],
                    channel_key=row["channel_key"],
                    attempt=leased["attempts"],
                    max_attempts=row["max_attempts"],
                    started_at=leased["last_attempt_at"],
                    channel=channel,
                )
            )
    return jobs


def _send(job: _Job, senders: Senders) -> None:
    t0 = time.monotonic()
    if job.channel is None:
        job.result = SendResult("failed", error="the channel is no longer configured on the alert")
    else:
        job.result = senders.send(job.channel, job.delivery_id, job.event, attempt=job.attempt)
    job.duration_ms = int((time.monotonic() - t0) * 1000)


def deliver_once(rt: Runtime, *, max_events: int = 50) -> DeliveryReport:
    """Plan new deliveries, then send up to ``max_events`` due ones (see the module doc), of
    every org with alerts, ``max_events`` shared between them; an org whose step fails is
    logged and the next served."""
    report = DeliveryReport()
    work = _alert_orgs(rt)
    share = max(1, max_events // max(1, len(work)))
    for org in work:
        try:
            got = _deliver_org(rt.for_org(org), max_events=share)
        except TraceError as exc:
            log.warning("alert delivery failed for org %s: %s", org, exc, extra={"org_id": org})
            continue
        for f in dataclasses.fields(DeliveryReport):
            setattr(report, f.name, getattr(report, f.name) + getattr(got, f.name))
    return report


def _alert_orgs(rt: Runtime) -> list[str]:
    """Orgs with alerts (the runtime's own first, always)."""
    with rt.state() as conn:
        others = [str(o.org_id) for o in orgs_with_work(conn, enabled_only=False)]
    own = str(rt.settings.org_id)
    return [own, *(o for o in others if o != own)]


def _deliver_org(rt: Runtime, *, max_events: int) -> DeliveryReport:
    """``deliver_once`` for the org ``rt`` acts for."""
    s = rt.settings
    report = DeliveryReport()
    specs = _definitions(rt)
    policy = RetryPolicy(
        s.alert_delivery_backoff_base_seconds, s.alert_delivery_backoff_max_seconds
    )
    with rt.data() as conn:
        report.planned = plan_deliveries(
            conn,
            specs,
            org_id=s.org_id,
            max_attempts=s.alert_delivery_max_attempts,
            max_age_seconds=s.alert_delivery_max_age_seconds,
            limit=max_events * 4,
        )
        jobs = _claim(conn, specs, org_id=s.org_id, limit=max_events, report=report)
        if not jobs:
            return report
        with conn.cursor(row_factory=dict_row) as cur:
            events = {
                r["dedupe_key"]: r
                for r in cur.execute(
                    q("alerts", "events_by_key"), {"keys": [j.dedupe_key for j in jobs]}
                ).fetchall()
            }
        for job in jobs:
            job.event = events[job.dedupe_key]
        with (
            httpx.HTTPTransport(retries=0) as transport,
            concurrent.futures.ThreadPoolExecutor(min(MAX_SENDERS, len(jobs))) as pool,
        ):
            senders = Senders(transport, s)
            list(pool.map(lambda j: _send(j, senders), jobs))
        for job in jobs:
            assert job.result is not None
            status, delay = next_step(
                job.result, attempt=job.attempt, max_attempts=job.max_attempts, policy=policy
            )
            report.attempted += 1
            if not _record(conn, job, job.result, status, delay):
                log.warning(
                    "delivery outcome not recorded: re-leased meanwhile",
                    extra={"delivery_id": str(job.delivery_id), "attempt": job.attempt},
                )
                continue
            if status == "delivered":
                report.delivered += 1
            elif status == "pending":
                report.retried += 1
            else:
                report.failed += 1
            fields = {
                "delivery_id": str(job.delivery_id),
                "alert": job.alert_name,
                "channel": job.channel.describe() if job.channel else job.channel_key,
                "attempt": job.attempt,
                "status": status,
                "status_code": job.result.status_code,
                "error": job.result.error,
            }
            if status == "delivered":
                log.info("alert delivered", extra=fields)
            else:
                log.warning("alert delivery %s", status, extra=fields)
    return report


def delivery_backlog(rt: Runtime) -> int:
    """Deliveries due now or in flight, plus recent events with none planned yet (what a
    foreground driver should wait for before calling the system idle)."""
    with rt.data() as conn:
        row = conn.execute(q("alerts", "delivery_backlog")).fetchone()
        unplanned = 0
        for org in _alert_orgs(rt):
            specs = _definitions(rt.for_org(org))
            if specs:
                unplanned += len(
                    conn.execute(
                        q("alerts", "events_to_plan"),
                        {
                            "names": sorted(specs),
                            "org_id": org,
                            "max_age_seconds": rt.settings.alert_delivery_max_age_seconds,
                            "limit": 1000,
                        },
                    ).fetchall()
                )
    assert row is not None
    return int(row[0]) + unplanned


def list_deliveries(
    conn: Connection[Any], *, alert_name: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Recent deliveries (newest first), for the CLI and tests."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            q("alerts", "list_deliveries"), {"alert_name": alert_name, "limit": limit}
        ).fetchall()


def events_with_delivery(rt: Runtime) -> list[dict[str, Any]]:
    """Every alert event with its delivery states, oldest block first (``trace-lite demo``)."""
    with rt.data() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(q("alerts", "events_with_delivery")).fetchall()


def evaluations_settled(rt: Runtime, task_ids: set[uuid.UUID]) -> bool:
    """Every evaluation task in ``task_ids`` finished, no event batch is waiting for the sink,
    and no delivery is due."""
    with rt.state() as conn:
        finished = conn.execute(
            q("alerts", "finished_tasks"), {"task_ids": list(task_ids)}
        ).fetchone()
        pending = conn.execute(q("alerts", "pending_outbox_on"), {"topic": BUFFER_QUEUE}).fetchone()
    buffer = rt.queue.stats(BUFFER_QUEUE)
    waiting = (pending[0] if pending else 1) + buffer.depth + buffer.in_flight
    done = finished[0] if finished else 0
    return done == len(task_ids) and waiting == 0 and delivery_backlog(rt) == 0
