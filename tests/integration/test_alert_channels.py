"""Email, Slack, PagerDuty and SMS alert channels on real Postgres, each against a real local
server (aiosmtpd with STARTTLS/TLS and AUTH, HTTP servers that answer like Slack and
PagerDuty, moto's SNS): what arrives, what each failure becomes (retry, dead letter), the
delivery history line, the dead-letter replay, and no secret in any record or log line."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb
from pydantic import SecretStr

from tests.integration.channel_servers import (
    PagerDutyLike,
    SlackLike,
    SmtpSink,
    Tls,
    make_tls,
)
from tests.integration.test_alerts_delivery import (
    alert_yaml,
    attempts,
    deliveries,
    setup_alert,
)
from tests.integration.test_alerts_delivery import make_rt as delivery_rt
from trace_core.alerts.dead import list_dead, replay_dead
from trace_core.alerts.delivery import deliver_once
from trace_core.cli.main import cli
from trace_core.db.connection import Databases
from trace_core.runtime import Runtime
from trace_core.settings import Settings
from trace_lite.echo import EchoReceiver
from trace_lite.stack import free_port

PASSWORD = "smtp-pa55-9f2c"
ROUTING_KEY = "R0UT1NGKEY0000000000000000000abc"
HOOK_TOKEN = "XyZ-slack-token-77"
HOOK = f"/services/T000/B000/{HOOK_TOKEN}"


def add_event(dbs: Databases, n: int, name: str = "whale") -> str:
    key = f"{name}:0xtx{n}"
    with psycopg.connect(dbs.data_url) as conn:
        conn.execute(
            """INSERT INTO data.alert_events (dedupe_key, alert_name, severity, chain_id,
                   block_number, block_hash, tx_hash, event_time, payload, created_at,
                   source_task_id, source_attempt)
               VALUES (%s, %s, 'critical', 1, %s, NULL, %s, now(), %s, now(), %s, 1)""",
            (
                key,
                name,
                n,
                f"0xtx{n}",
                Jsonb({"row": {"value_wei": str(n * 10**18)}}),
                uuid.uuid4(),
            ),
        )
    return key


def make_rt(settings: Settings, dbs: Databases, **overrides: Any) -> Runtime:
    """The delivery tests' runtime; every local server here listens on 127.0.0.1, which the
    SSRF guard refuses unless loopback/private destinations are allowed: allowed explicitly
    (the Lite default), and refused in the test that sets it to False."""
    return delivery_rt(settings, dbs, **{"alert_webhook_allow_private": True, **overrides})


def recorded(dbs: Databases, caplog: pytest.LogCaptureFixture) -> str:
    """Everything a secret must never reach: delivery rows, attempt rows, log lines."""
    return json.dumps([*deliveries(dbs), *attempts(dbs)], default=str) + caplog.text


def history(dbs: Databases) -> list[tuple[int, str, int | None, str | None]]:
    return [(a["attempt"], a["outcome"], a["status_code"], a["error"]) for a in attempts(dbs)]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def smtp(tls: Tls) -> Iterator[SmtpSink]:
    sink = SmtpSink(free_port("127.0.0.1")).start(tls=tls, credentials=("alerts", PASSWORD))
    yield sink
    sink.stop()


def smtp_settings(tls: Tls, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_username": "alerts",
        "smtp_password": SecretStr(PASSWORD),
        "smtp_from": "trace@example.com",
        "smtp_ca_file": tls.ca_file,
        **extra,
    }


EMAIL = '  - email: {to: ["oncall@example.com", "ops@example.com"], subject_prefix: "[chain]"}'


def test_email_over_starttls_with_auth_arrives_once_as_text_and_html(
    settings: Settings,
    dbs: Databases,
    smtp: SmtpSink,
    tls: Tls,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    rt = make_rt(settings, dbs, **smtp_settings(tls, smtp.port))
    setup_alert(rt, EMAIL)
    key = add_event(dbs, 3)
    assert deliver_once(rt).delivered == 1
    assert deliver_once(rt).attempted == 0  # delivered: never sent again
    [msg] = smtp.messages
    assert smtp.logins == ["alerts"]
    assert smtp.envelopes == [("trace@example.com", ["oncall@example.com", "ops@example.com"])]
    [d] = deliveries(dbs)
    assert msg["Message-ID"] == f"<{d['delivery_id']}@trace-lite>"
    assert msg["Subject"] == "[chain] [critical] whale: chain 1 block 3 tx 0xtx3"
    assert msg["X-Trace-Dedupe-Key"] == key
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    assert "value_wei: 3000000000000000000" in text.get_content()
    assert "<code>3000000000000000000</code>" in html.get_content()
    assert history(dbs) == [(1, "delivered", 250, None)]
    assert PASSWORD not in recorded(dbs, caplog)


def test_email_over_implicit_tls(settings: Settings, dbs: Databases, tls: Tls) -> None:
    sink = SmtpSink(free_port("127.0.0.1")).start(tls=tls, mode="tls")
    try:
        rt = make_rt(
            settings,
            dbs,
            **smtp_settings(tls, sink.port, smtp_security="tls", smtp_username=None),
        )
        setup_alert(rt, EMAIL)
        add_event(dbs, 1)
        assert deliver_once(rt).delivered == 1
        assert len(sink.messages) == 1
    finally:
        sink.stop()


def test_unreachable_smtp_is_retried_then_dead_lettered_then_replayed(
    settings: Settings, dbs: Databases, tls: Tls
) -> None:
    port = free_port("127.0.0.1")  # nothing listens here yet
    rt = make_rt(settings, dbs, alert_delivery_max_attempts=2, **smtp_settings(tls, port))
    setup_alert(rt, EMAIL)
    add_event(dbs, 1)
    assert deliver_once(rt).retried == 1
    assert deliver_once(rt).failed == 1
    got = history(dbs)
    assert [(a, o, c) for a, o, c, _ in got] == [(1, "retry", None), (2, "failed", None)]
    assert all(e and e.startswith(f"SMTP 127.0.0.1:{port} unreachable: ") for *_, e in got)
    with rt.data() as conn:
        [dead] = list_dead(conn)
    assert dead["channel_kind"] == "email" and dead["attempts"] == 2

    sink = SmtpSink(port).start(tls=tls, credentials=("alerts", PASSWORD))
    try:
        with rt.data() as conn:
            assert replay_dead(conn, more_attempts=2) == 1
            assert list_dead(conn) == []
        assert deliver_once(rt).delivered == 1
        assert len(sink.messages) == 1
        assert [a for a, *_ in history(dbs)] == [1, 2, 3]
    finally:
        sink.stop()


def test_email_refusals_are_permanent_and_leak_nothing(
    settings: Settings, dbs: Databases, smtp: SmtpSink, tls: Tls, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wr0ng-" + PASSWORD
    rt = make_rt(settings, dbs, **smtp_settings(tls, smtp.port, smtp_password=SecretStr(wrong)))
    setup_alert(rt, EMAIL)
    add_event(dbs, 1)
    assert deliver_once(rt).failed == 1  # a bad password does not heal by retrying
    [(_, outcome, code, error)] = history(dbs)
    assert (outcome, code) == ("failed", None)
    assert error == f"SMTP 535 authentication failed at 127.0.0.1:{smtp.port}"
    assert smtp.messages == []
    assert wrong not in recorded(dbs, caplog)

    plain = SmtpSink(free_port("127.0.0.1")).start()  # offers no STARTTLS: never downgraded
    try:
        rt2 = make_rt(settings, dbs, **smtp_settings(tls, plain.port))
        add_event(dbs, 2)
        assert deliver_once(rt2).failed == 1
        assert f"SMTP server 127.0.0.1:{plain.port} does not offer STARTTLS" in json.dumps(
            history(dbs)
        )
        assert plain.messages == []
    finally:
        plain.stop()


@pytest.fixture
def slack() -> Iterator[SlackLike]:
    server = SlackLike({HOOK})
    yield server
    server.stop()


def test_slack_blocks_rate_limit_retry_after_and_a_4xx_dead_letter(
    settings: Settings,
    dbs: Databases,
    slack: SlackLike,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TRACE_ALERT_SECRET_SLACK_OPS", slack.url(HOOK))
    rt = make_rt(settings, dbs)
    gone = slack.url(f"/services/T000/B999/{HOOK_TOKEN}")  # a deleted hook: 404 no_service
    setup_alert(
        rt,
        "  - slack: {url_secret: slack_ops, rate_limit_per_minute: 2}\n"
        f'  - slack: {{url: "{gone}"}}',
    )
    for n in range(3):
        add_event(dbs, n)
    slack.script[HOOK] = [(429, {"Retry-After": "30"}, b"rate_limited")]
    first = deliver_once(rt)
    # 3 events x 2 hooks; the live hook takes 2 per minute: one 429, one delivered, one waits
    assert (first.planned, first.attempted, first.rate_limited) == (6, 5, 1)
    assert (first.delivered, first.retried, first.failed) == (1, 1, 3)
    [message] = slack.messages
    assert message["text"].startswith("[critical] whale: chain 1 block ")
    types = [b["type"] for b in message["blocks"]]
    assert types == ["header", "section", "section", "context"]
    pending = [d for d in deliveries(dbs) if d["status"] == "pending"]
    assert sorted(d["attempts"] for d in pending) == [0, 1]  # the 429'd one, the rate-limited one
    [throttled] = [d for d in pending if d["attempts"] == 1]
    wait = (throttled["next_attempt_at"] - throttled["last_attempt_at"]).total_seconds()
    assert wait >= 29  # Retry-After honoured over the backoff base (0 here)
    dead = sorted(a["error"] for a in attempts(dbs) if a["outcome"] == "failed")
    assert dead == ["HTTP 404 no_service"] * 3
    with rt.data() as conn:
        assert {r["channel_kind"] for r in list_dead(conn)} == {"slack"}
    assert HOOK_TOKEN not in recorded(dbs, caplog)


def test_pagerduty_dedup_key_429_and_no_second_incident(
    settings: Settings,
    dbs: Databases,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    pd = PagerDutyLike(ROUTING_KEY)
    try:
        monkeypatch.setenv("TRACE_ALERT_SECRET_PD_OPS", ROUTING_KEY)
        rt = make_rt(settings, dbs)
        setup_alert(
            rt,
            f'  - pagerduty: {{routing_key_secret: pd_ops, url: "{pd.url("/v2/enqueue")}"}}\n'
            f'  - pagerduty: {{routing_key_secret: pd_unset, url: "{pd.url("/v2/enqueue")}"}}',
        )
        key = add_event(dbs, 1)
        pd.script["/v2/enqueue"] = [(429, {}, b'{"status":"throttle event"}')]
        first = deliver_once(rt)
        assert (first.retried, first.failed) == (1, 1)
        assert deliver_once(rt).delivered == 1
        assert pd.incidents.keys() == {key} and pd.triggers == 1
        body = pd.incidents[key]
        assert (body["dedup_key"], body["payload"]["severity"]) == (key, "critical")
        assert body["payload"]["custom_details"]["row"] == {"value_wei": "1000000000000000000"}

        # the sender died after PagerDuty accepted: the resend carries the same dedup_key
        with psycopg.connect(dbs.data_url) as conn:
            conn.execute(
                """UPDATE data.alert_deliveries SET status = 'sending', delivered_at = NULL,
                       leased_until = now() - interval '1 second'
                   WHERE status = 'delivered'"""
            )
            conn.execute("DELETE FROM data.alert_delivery_attempts WHERE outcome = 'delivered'")
        assert deliver_once(rt).delivered == 1
        assert pd.triggers == 2 and len(pd.incidents) == 1  # paged once
        got = {(a["outcome"], a["status_code"], a["error"]) for a in attempts(dbs)}
        assert len(attempts(dbs)) == 4 and got == {
            ("delivered", 202, None),
            ("failed", None, "secret TRACE_ALERT_SECRET_PD_UNSET is not set"),
            ("retry", 429, "HTTP 429"),
            ("retry", None, "no outcome recorded before the send lease expired"),
        }
        assert ROUTING_KEY not in recorded(dbs, caplog)
    finally:
        pd.stop()


def test_http_channels_refuse_metadata_and_private_destinations(
    settings: Settings, dbs: Databases, slack: SlackLike, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACE_ALERT_SECRET_PD", ROUTING_KEY)
    rt = make_rt(settings, dbs, alert_webhook_allow_private=False)
    setup_alert(
        rt,
        f'  - slack: {{url: "{slack.url(HOOK)}"}}\n'
        '  - pagerduty: {routing_key_secret: pd, url: "http://169.254.169.254/v2/enqueue"}',
    )
    add_event(dbs, 1)
    assert deliver_once(rt).failed == 2 and slack.seen == []
    assert sorted(d["last_error"] for d in deliveries(dbs)) == [
        "destination address 127.0.0.1 is private (not allowed)",
        "destination address 169.254.169.254 is not allowed",
    ]


def test_sms_through_moto_sns(
    settings: Settings, dbs: Databases, moto_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sns.models import sns_backends

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    phone = f"+1555{uuid.uuid4().int % 10**7:07d}"
    rt = make_rt(settings, dbs, sns_endpoint_url=moto_server_url, aws_region="eu-west-3")
    setup_alert(
        rt,
        f'  - sms: {{phone_number: "{phone}"}}\n'
        '  - sms: {topic_arn: "arn:aws:sns:eu-west-3:123456789012:no-such-topic"}',
    )
    add_event(dbs, 4)
    report = deliver_once(rt)
    assert (report.delivered, report.failed) == (1, 1)
    sent = sns_backends[DEFAULT_ACCOUNT_ID]["eu-west-3"].sms_messages.values()
    assert [m for p, m in sent if p == phone] == ["[critical] whale: chain 1 block 4 tx 0xtx4"]
    [failed] = [d for d in deliveries(dbs) if d["status"] == "failed"]
    assert failed["last_status_code"] == 404 and failed["last_error"].startswith("SNS NotFound")

    # an SNS endpoint that does not answer: retried, never failed at once
    down = make_rt(settings, dbs, sns_endpoint_url=f"http://127.0.0.1:{free_port('127.0.0.1')}")
    add_event(dbs, 5)
    assert deliver_once(down).retried == 2  # both channels of the new event
    errors = [a["error"] for a in attempts(dbs) if a["outcome"] == "retry"]
    assert errors == ["SNS unreachable: EndpointConnectionError"] * 2


def test_cli_test_channel_history_and_dead_letters(
    trace_env: Runtime,
    settings: Settings,
    dbs: Databases,
    slack: SlackLike,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("TRACE_ALERT_SECRET_SLACK_OPS", slack.url(HOOK))
    gone = slack.url(f"/services/T000/B999/{HOOK_TOKEN}")
    channels = f'  - slack: {{url_secret: slack_ops}}\n  - slack: {{url: "{gone}"}}'
    alert_file = tmp_path / "whale.yaml"
    alert_file.write_text(alert_yaml(channels))
    runner = CliRunner()

    tested = runner.invoke(cli, ["alerts", "test-channel", "--file", str(alert_file)])
    assert tested.exit_code == 1, tested.output
    assert tested.output.splitlines() == [
        "slack (secret slack_ops): delivered (200)",
        f"slack http://127.0.0.1:{slack.port}/...: failed (404): HTTP 404 no_service",
    ]
    [message] = slack.messages
    assert message["text"] == "[critical] whale: chain 0 block 0"
    only = runner.invoke(
        cli, ["alerts", "test-channel", "--file", str(alert_file), "--channel", "0"]
    )
    assert only.exit_code == 0 and len(slack.messages) == 2, only.output

    rt = make_rt(settings, dbs)
    setup_alert(rt, channels)
    add_event(dbs, 1)
    assert deliver_once(rt).failed == 1
    [dead] = [d for d in deliveries(dbs) if d["status"] == "failed"]
    did = str(dead["delivery_id"])
    listed = runner.invoke(cli, ["dlq", "list", "--queue", "alert_deliveries"])
    assert listed.exit_code == 0 and did in listed.output, listed.output
    assert "attempts=1/3\tHTTP 404 no_service" in listed.output
    hint = runner.invoke(cli, ["dlq", "list"]).output
    assert "1 failed alert deliveries: dlq list --queue alert_deliveries" in hint
    shown = runner.invoke(cli, ["alerts", "history", did])
    assert shown.exit_code == 0, shown.output
    assert shown.output.splitlines()[0] == "whale whale:0xtx1 slack: failed"
    assert " failed 404 " in shown.output and shown.output.rstrip().endswith("HTTP 404 no_service")

    unknown = runner.invoke(
        cli, ["dlq", "replay", "--queue", "alert_deliveries", str(uuid.uuid4())]
    )
    assert unknown.exit_code == 1 and "nothing changed" in unknown.output
    replayed = runner.invoke(cli, ["dlq", "replay", "--queue", "alert_deliveries", did])
    assert replayed.exit_code == 0 and "replayed 1" in replayed.output, replayed.output
    assert deliver_once(rt).failed == 1  # the same hook is still gone: dead again
    assert [a["attempt"] for a in attempts(dbs) if str(a["delivery_id"]) == did] == [1, 2]
    purged = runner.invoke(cli, ["dlq", "purge", "--queue", "alert_deliveries", "--all", "--yes"])
    assert purged.exit_code == 0 and "purged 1" in purged.output, purged.output
    empty = runner.invoke(cli, ["dlq", "list", "--queue", "alert_deliveries"]).output
    assert empty.strip() == "no dead letters on queue 'alert_deliveries'"
    everything = tested.output + listed.output + shown.output + hint
    assert HOOK_TOKEN not in everything


def test_the_demo_echo_receiver_records_each_delivery_once(
    settings: Settings, dbs: Databases
) -> None:
    echo = EchoReceiver.start(free_port("127.0.0.1"))
    try:
        rt = make_rt(settings, dbs)
        setup_alert(rt, f'  - webhook: {{url: "{echo.url}"}}')
        keys = [add_event(dbs, n) for n in (1, 2)]
        assert deliver_once(rt).delivered == 2
        arrivals = echo.arrivals()
        assert sorted(arrivals) == sorted(keys)
        # a sender that died mid-request resends with the same Idempotency-Key: counted once
        with psycopg.connect(dbs.data_url) as conn:
            conn.execute(
                """UPDATE data.alert_deliveries SET status = 'sending', delivered_at = NULL,
                       leased_until = now() - interval '1 second'
                   WHERE dedupe_key = %s""",
                (keys[0],),
            )
            conn.execute(
                """DELETE FROM data.alert_delivery_attempts a USING data.alert_deliveries d
                   WHERE a.delivery_id = d.delivery_id AND d.dedupe_key = %s""",
                (keys[0],),
            )
        assert deliver_once(rt).delivered == 1
        again = echo.arrivals()
        assert len(again) == 2 and again[keys[0]].posts == 2 and again[keys[1]].posts == 1
        assert again[keys[0]].alert == "whale"
    finally:
        echo.stop()


def test_refused_recipients_retry_or_deliver_by_reply_code(
    settings: Settings, dbs: Databases, smtp: SmtpSink, tls: Tls
) -> None:
    smtp.refuse = {
        "nobody@example.com": "550 5.1.1 no such user",
        "busy@example.com": "451 4.3.0 mailbox busy",
    }
    rt = make_rt(settings, dbs, **smtp_settings(tls, smtp.port))
    setup_alert(
        rt,
        '  - email: {to: ["ok@example.com", "nobody@example.com"]}\n'
        '  - email: {to: ["busy@example.com"]}',
    )
    add_event(dbs, 1)
    report = deliver_once(rt)
    assert (report.delivered, report.retried) == (1, 1)
    assert smtp.envelopes == [("trace@example.com", ["ok@example.com"])]
    assert sorted((o, c, e) for _, o, c, e in history(dbs)) == [
        ("delivered", 250, "some recipients refused: nobody@example.com (550)"),
        ("retry", 451, "SMTP recipients refused: busy@example.com (451)"),
    ]
