"""Alert delivery on real Postgres against a real local HTTP receiver (stdlib http.server):
retries with backoff across ticks, rate limits, no re-send, permanent failures, timeouts,
redirects, crashed senders, refused destinations, and no secret in any record or log line."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from trace_core.alerts.delivery import deliver_once, delivery_backlog, delivery_id
from trace_core.alerts.spec import parse_alert
from trace_core.alerts.store import apply_alert
from trace_core.chain_sync import store as chain_sync_store
from trace_core.chain_sync.yamlload import parse_job
from trace_core.db.connection import Databases
from trace_core.runtime import Runtime
from trace_core.settings import Settings

SECRET = "tok-5e3a9c"
JOB = """kind: chain_sync
name: demo
chain_id: 1
mode: {kind: fixed_target, from_block: 0, to_block: 1000}
streams:
  transactions: {cryo_dataset_name: transactions, rpc_pool: p, chunk_size: 500, max_inflight: 1}
"""


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1: answers each POST from ``script`` (status, headers,
    delay seconds), then 200; records every request."""

    port: int = 0
    script: list[tuple[int, dict[str, str], float]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = f"/hook/{SECRET}?key={SECRET}") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def paths(self) -> list[str]:
        with self.lock:
            return [s.path for s in self.seen]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's API
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            with rec.lock:
                rec.seen.append(Seen(self.path, dict(self.headers.items()), body))
                status, headers, delay = rec.script.pop(0) if rec.script else (200, {}, 0.0)
            time.sleep(delay)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client that timed out and hung up: expected here

    server = Server(("127.0.0.1", 0), Handler)
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def alert_yaml(channels: str, name: str = "whale") -> str:
    return f"""kind: alert
name: {name}
job: demo
reads: [transactions]
condition: "SELECT block_number, transaction_hash FROM transactions"
trigger: {{on_commit: true}}
dedupe_key: "{name}:{{transaction_hash}}"
severity: critical
channels:
{channels}
"""


def webhook(url: str, **extra: Any) -> str:
    opts = "".join(f", {k}: {v}" for k, v in extra.items())
    return f'  - webhook: {{url: "{url}"{opts}}}'


def make_rt(settings: Settings, dbs: Databases, **overrides: Any) -> Runtime:
    base: dict[str, Any] = {
        "alert_delivery_backoff_base_seconds": 0.0,
        "alert_delivery_max_attempts": 3,
    }
    return Runtime(settings.model_copy(update={**base, **overrides}), dbs)


def setup_alert(rt: Runtime, channels: str, name: str = "whale") -> None:
    loaded_job = parse_job(JOB, source="job.yaml")
    with rt.state() as conn:
        chain_sync_store.apply_job(
            conn, rt.settings.org_id, loaded_job.spec, loaded_job.raw, "job.yaml"
        )
        apply_alert(conn, rt.settings.org_id, parse_alert(alert_yaml(channels, name)), "a.yaml")


def add_event(
    dbs: Databases, n: int, name: str = "whale", created_at: datetime | None = None
) -> str:
    key = f"{name}:0xtx{n}"
    with psycopg.connect(dbs.data_url) as conn:
        conn.execute(
            """INSERT INTO data.alert_events (dedupe_key, alert_name, severity, chain_id,
                   block_number, block_hash, tx_hash, event_time, payload, created_at,
                   source_task_id, source_attempt)
               VALUES (%s, %s, 'critical', 1, %s, NULL, %s, now(), %s, COALESCE(%s, now()), %s, 1)""",
            (key, name, n, f"0xtx{n}", Jsonb({"n": n}), created_at, uuid.uuid4()),
        )
    return key


def rows(dbs: Databases, sql: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(dbs.data_url, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


def deliveries(dbs: Databases) -> list[dict[str, Any]]:
    return rows(dbs, "SELECT * FROM data.alert_deliveries ORDER BY dedupe_key, channel_key")


def attempts(dbs: Databases) -> list[dict[str, Any]]:
    return rows(dbs, "SELECT * FROM data.alert_delivery_attempts ORDER BY delivery_id, attempt")


def test_retries_until_delivered_then_never_resends(
    settings: Settings, dbs: Databases, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rt = make_rt(settings, dbs)
    setup_alert(rt, webhook(receiver.url()))
    key = add_event(dbs, 1)
    add_event(dbs, 2, name="not_an_alert")  # no definition: never planned
    receiver.script = [(500, {}, 0.0), (503, {}, 0.0)]

    first = deliver_once(rt)
    assert (first.planned, first.attempted, first.retried) == (1, 1, 1)
    assert delivery_backlog(rt) == 1  # due again at once (backoff base 0)
    assert deliver_once(rt).retried == 1
    third = deliver_once(rt)
    assert third.delivered == 1 and third.attempted == 1
    for _ in range(2):
        again = deliver_once(rt)
        assert (again.planned, again.attempted) == (0, 0)
    assert delivery_backlog(rt) == 0

    assert len(receiver.seen) == 3
    did = str(delivery_id(key, deliveries(dbs)[0]["channel_key"]))
    assert {s.headers["Idempotency-Key"] for s in receiver.seen} == {did}
    assert [s.headers["X-Trace-Delivery-Attempt"] for s in receiver.seen] == ["1", "2", "3"]
    assert all(s.body == receiver.seen[0].body for s in receiver.seen)
    assert (
        receiver.seen[0].body["dedupe_key"] == key and receiver.seen[0].body["delivery_id"] == did
    )
    [d] = deliveries(dbs)
    assert (d["status"], d["attempts"], d["last_status_code"]) == ("delivered", 3, 200)
    got = [(a["attempt"], a["outcome"], a["status_code"]) for a in attempts(dbs)]
    assert got == [(1, "retry", 500), (2, "retry", 503), (3, "delivered", 200)]
    recorded = json.dumps([*attempts(dbs), *deliveries(dbs)], default=str) + caplog.text
    assert SECRET not in recorded


def test_backoff_waits_across_ticks(settings: Settings, dbs: Databases, receiver: Receiver) -> None:
    rt = make_rt(settings, dbs, alert_delivery_backoff_base_seconds=30.0)
    setup_alert(rt, webhook(receiver.url()))
    add_event(dbs, 1)
    receiver.script = [(500, {}, 0.0)]
    assert deliver_once(rt).retried == 1
    [d] = deliveries(dbs)
    wait = (d["next_attempt_at"] - d["last_attempt_at"]).total_seconds()
    assert 29 <= wait <= 31
    assert deliver_once(rt).attempted == 0 and len(receiver.seen) == 1
    assert delivery_backlog(rt) == 0  # nothing due now: a foreground driver may go idle


def test_rate_limit_per_channel(settings: Settings, dbs: Databases, receiver: Receiver) -> None:
    rt = make_rt(settings, dbs)
    setup_alert(rt, webhook(receiver.url(), rate_limit_per_minute=2) + "\n  - log: {}")
    for n in range(5):
        add_event(dbs, n)
    first = deliver_once(rt)
    assert first.planned == 10  # 5 events x (webhook + log)
    assert first.delivered == 7 and first.rate_limited == 3  # logs are not rate limited
    second = deliver_once(rt)
    assert second.attempted == 0 and second.rate_limited == 3
    assert len(receiver.seen) == 2
    statuses = sorted(d["status"] for d in deliveries(dbs) if d["channel_kind"] == "webhook")
    assert statuses == ["delivered", "delivered", "pending", "pending", "pending"]


def test_permanent_failures_redirects_and_exhaustion(
    settings: Settings, dbs: Databases, receiver: Receiver
) -> None:
    rt = make_rt(settings, dbs, alert_delivery_max_attempts=2)
    setup_alert(rt, webhook(receiver.url()))
    add_event(dbs, 1)
    add_event(dbs, 2)
    add_event(dbs, 3)
    receiver.script = [
        (404, {}, 0.0),
        (302, {"Location": "/elsewhere"}, 0.0),
        (500, {}, 0.0),
    ]
    report = deliver_once(rt)
    assert report.attempted == 3 and report.failed == 2 and report.retried == 1
    receiver.script = [(500, {}, 0.0)]
    assert deliver_once(rt).failed == 1  # second 500 of a 2-attempt budget: terminal
    assert deliver_once(rt).attempted == 0
    assert "/elsewhere" not in receiver.paths() and len(receiver.seen) == 4
    by_code = sorted((d["last_status_code"], d["status"], d["last_error"]) for d in deliveries(dbs))
    assert by_code == [
        (302, "failed", "HTTP 302 (redirects are not followed)"),
        (404, "failed", "HTTP 404"),
        (500, "failed", "HTTP 500"),
    ]


def test_timeout_is_retried(settings: Settings, dbs: Databases, receiver: Receiver) -> None:
    rt = make_rt(settings, dbs)
    setup_alert(rt, webhook(receiver.url(), timeout_seconds=0.3))
    add_event(dbs, 1)
    receiver.script = [(200, {}, 1.0)]
    report = deliver_once(rt)
    assert report.retried == 1
    [a] = attempts(dbs)
    assert a["outcome"] == "retry" and a["status_code"] is None and "timeout" in a["error"]
    assert deliver_once(rt).delivered == 1  # the next answer is immediate


def test_retry_after_is_honoured(settings: Settings, dbs: Databases, receiver: Receiver) -> None:
    rt = make_rt(settings, dbs)
    setup_alert(rt, webhook(receiver.url()))
    add_event(dbs, 1)
    receiver.script = [(429, {"Retry-After": "20"}, 0.0)]
    assert deliver_once(rt).retried == 1
    [d] = deliveries(dbs)
    assert (d["next_attempt_at"] - d["last_attempt_at"]).total_seconds() >= 19
    assert deliver_once(rt).attempted == 0


def test_log_channel_delivers_a_structured_line(
    settings: Settings, dbs: Databases, caplog: pytest.LogCaptureFixture
) -> None:
    rt = make_rt(settings, dbs)
    setup_alert(rt, "  - log: {}")
    key = add_event(dbs, 7)
    with caplog.at_level(logging.INFO, logger="trace_core.alerts.delivery"):
        assert deliver_once(rt).delivered == 1
    record = next(r for r in caplog.records if getattr(r, "dedupe_key", None) == key)
    assert record.alert == "whale" and record.block_number == 7  # type: ignore[attr-defined]
    assert deliver_once(rt).attempted == 0


def test_a_crashed_sender_is_resent_with_the_same_key(
    settings: Settings, dbs: Databases, receiver: Receiver
) -> None:
    rt = make_rt(settings, dbs)
    setup_alert(rt, webhook(receiver.url()))
    key = add_event(dbs, 1)
    assert deliver_once(rt).delivered == 1
    # pretend the first send's process died mid-request: the row is left 'sending'
    with psycopg.connect(dbs.data_url) as conn:
        conn.execute(
            """UPDATE data.alert_deliveries SET status = 'sending', delivered_at = NULL,
                   leased_until = now() - interval '1 second', attempts = 1"""
        )
        conn.execute("DELETE FROM data.alert_delivery_attempts")
    assert deliver_once(rt).delivered == 1
    assert len({s.headers["Idempotency-Key"] for s in receiver.seen}) == 1
    got = [(a["attempt"], a["outcome"], a["error"]) for a in attempts(dbs)]
    assert got == [
        (1, "retry", "no outcome recorded before the send lease expired"),
        (2, "delivered", None),
    ]
    assert deliveries(dbs)[0]["dedupe_key"] == key


def test_refused_destinations_are_never_contacted(
    settings: Settings, dbs: Databases, receiver: Receiver
) -> None:
    rt = make_rt(settings, dbs, alert_webhook_allow_private=False)
    setup_alert(
        rt,
        webhook(receiver.url()) + "\n" + webhook(f"http://169.254.169.254/latest/{SECRET}"),
    )
    add_event(dbs, 1)
    report = deliver_once(rt)
    assert report.failed == 2 and receiver.seen == []
    errors = sorted(d["last_error"] for d in deliveries(dbs))
    assert errors == [
        "destination address 127.0.0.1 is private (not allowed)",
        "destination address 169.254.169.254 is not allowed",
    ]


def test_old_events_get_no_deliveries(
    settings: Settings, dbs: Databases, receiver: Receiver, tmp_path: Path
) -> None:
    rt = make_rt(settings, dbs, alert_delivery_max_age_seconds=3600)
    setup_alert(rt, webhook(receiver.url()))
    add_event(dbs, 1, created_at=datetime.now(UTC) - timedelta(hours=2))
    assert deliver_once(rt).planned == 0 and receiver.seen == []
