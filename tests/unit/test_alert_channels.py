"""Alert channel YAML (errors name file:line:field and never echo secrets), channel keys,
what each channel renders, and how SNS errors are classified (pure)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.unit.test_alert_spec import problems
from trace_core.alerts import render
from trace_core.alerts.channel_spec import Channel, EmailChannel
from trace_core.alerts.sns import classify_error
from trace_core.alerts.spec import parse_alert
from trace_core.settings import alert_secret, alert_secret_env_var

TOKEN = "tok-8c1f-secret"
BASE = """kind: alert
name: whale
job: demo
reads: [transactions]
condition: "SELECT block_number, transaction_hash FROM transactions"
trigger: {on_commit: true}
dedupe_key: "whale:{transaction_hash}"
severity: critical
channels:
  - log: {}
"""


def with_channel(channel: str) -> str:
    return BASE + channel + "\n"


def spec_channels(channel: str) -> list[Channel]:
    return list(parse_alert(with_channel(channel)).spec.channels)


def test_every_channel_type_parses_with_defaults() -> None:
    _, slack, pd, email, sms, topic = spec_channels(
        f'  - slack: {{url: "https://hooks.slack.com/services/T0/B0/{TOKEN}"}}\n'
        "  - pagerduty: {routing_key_secret: pd_ops}\n"
        '  - email: {to: ["oncall@example.com"]}\n'
        '  - sms: {phone_number: "+15555550100"}\n'
        '  - sms: {topic_arn: "arn:aws:sns:us-east-1:123456789012:alerts.fifo"}'
    )
    assert [c.kind for c in (slack, pd, email, sms, topic)] == [
        "slack",
        "pagerduty",
        "email",
        "sms",
        "sms",
    ]
    assert pd.pagerduty is not None
    assert pd.pagerduty.url == "https://events.pagerduty.com/v2/enqueue"
    assert [c.rate_limit_per_minute for c in (slack, pd, email, sms)] == [60, 60, 30, 10]
    assert Channel(log={}).rate_limit_per_minute is None  # type: ignore[arg-type]
    described = " ".join(c.describe() for c in (slack, pd, email, sms, topic))
    assert TOKEN not in described and "+15...0100" in described
    assert "routing key secret pd_ops" in described


@pytest.mark.parametrize(
    ("channel", "expected"),
    [
        (
            "  - teams: {url: 'https://x.example/'}",
            "alert.yaml:11: channels[1]: unknown channel type 'teams'; a channel is exactly one of "
            "webhook, slack, pagerduty, email, sms, log",
        ),
        ("  - email: {subject_prefix: x}", "alert.yaml:11: channels[1].email.to: field required"),
        ("  - email: {to: []}", "alert.yaml:11: channels[1].email.to: List should have at least"),
        (
            "  - email: {to: ['not-an-address']}",
            "alert.yaml:11: channels[1].email.to[0]: must be an email address",
        ),
        (
            '  - email: {to: [a@example.com], subject_prefix: "x\\r\\nBcc: b@evil.example"}',
            "channels[1].email.subject_prefix: must be a single line",
        ),
        ("  - sms: {}", "alert.yaml:11: channels[1].sms: sms needs exactly one of phone_number"),
        ("  - sms: {phone_number: '555 0100'}", "channels[1].sms: phone_number must be E.164"),
        ("  - sms: {topic_arn: 'arn:nope'}", "channels[1].sms: topic_arn must look like"),
        ("  - slack: {}", "alert.yaml:11: channels[1].slack: slack needs exactly one of url"),
        ("  - slack: {url: 'slack.com/hook'}", "channels[1].slack.url: must be an http://"),
        ("  - pagerduty: {}", "channels[1].pagerduty.routing_key_secret: field required"),
        (
            "  - pagerduty: {routing_key: abc, routing_key_secret: ok}",
            "alert.yaml:11: channels[1].pagerduty.routing_key: unknown field",
        ),
        (
            "  - pagerduty: {routing_key_secret: pd, url: 'ftp://events.example/'}",
            "channels[1].pagerduty.url: must be an http://",
        ),
        (
            "  - email: {to: [a@example.com], rate_limit_per_minute: 0}",
            "channels[1].email.rate_limit_per_minute: Input should be greater than 0",
        ),
    ],
)
def test_channel_problems_name_file_line_and_field(channel: str, expected: str) -> None:
    found = problems(with_channel(channel))
    assert any(expected in p for p in found), found


@pytest.mark.parametrize(
    "channel",
    [
        f"  - slack: {{url_secret: 'https://hooks.slack.com/services/{TOKEN}'}}",
        f"  - pagerduty: {{routing_key_secret: '{TOKEN}'}}",
        f"  - slack: {{url: 'https://hooks.slack.com/{TOKEN} x'}}",
        f"  - slack: {{url: 'https://user:{TOKEN}@hooks.slack.com/'}}",
    ],
)
def test_a_secret_put_where_a_name_or_url_goes_is_never_echoed(channel: str) -> None:
    found = problems(with_channel(channel))
    assert found and all(TOKEN not in p for p in found)
    assert all(p.startswith("alert.yaml:11: channels[1].") for p in found), found


def test_channel_keys_are_stable_and_hide_addresses() -> None:
    url = f"https://hooks.example.com/{TOKEN}"
    [_, webhook, slack] = spec_channels(
        f'  - webhook: {{url: "{url}"}}\n  - slack: {{url: "{url}"}}'
    )
    # webhook keys are unchanged from before other channel types existed (pending rows keep)
    assert webhook.key == "webhook:" + hashlib.sha256(url.encode()).hexdigest()[:16]
    assert slack.key.startswith("slack:") and slack.key[6:] == webhook.key[8:]
    a = Channel(email=EmailChannel(to=["A@example.com", "b@example.com"]))
    b = Channel(email=EmailChannel(to=["b@example.com", "a@example.com"]))
    assert a.key == b.key and a.key.startswith("email:")
    assert all(TOKEN not in c.key for c in (webhook, slack))


def test_unknown_and_empty_channels_fail_once_each() -> None:
    found = problems(with_channel("  - {}\n  - log: {}\n    sms: {phone_number: '+15555550100'}"))
    assert [p.split(": ", 1)[0] for p in found] == ["alert.yaml:11", "alert.yaml:12"]


def test_secret_names_map_to_environment_variables() -> None:
    assert alert_secret_env_var("pd_ops") == "TRACE_ALERT_SECRET_PD_OPS"
    assert alert_secret("pd_ops", {"TRACE_ALERT_SECRET_PD_OPS": " k "}) == "k"
    assert alert_secret("pd_ops", {"TRACE_ALERT_SECRET_PD_OPS": ""}) is None


EVENT: dict[str, Any] = {
    "dedupe_key": "whale:0xabc",
    "alert_name": "whale",
    "severity": "critical",
    "chain_id": 1,
    "block_number": 85,
    "block_hash": "0xblock",
    "tx_hash": "0xabc",
    "event_time": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    "payload": {"row": {"value_wei": "5000000000000000000", "to": "<script>"}},
}
DELIVERY = uuid.UUID("12345678-1234-5678-1234-567812345678")


def test_slack_message_has_text_and_blocks() -> None:
    body = render.slack_body(DELIVERY, EVENT)
    assert body["text"] == "[critical] whale: chain 1 block 85 tx 0xabc"
    assert [b["type"] for b in body["blocks"]] == ["header", "section", "section", "context"]
    fields = body["blocks"][2]["fields"]
    assert fields[0] == {"type": "mrkdwn", "text": "*value_wei*\n`5000000000000000000`"}
    assert render.slack_body(DELIVERY, EVENT) == body  # identical on every attempt


def test_pagerduty_trigger_carries_the_dedupe_key() -> None:
    body = render.pagerduty_body("rk", EVENT)
    assert (body["routing_key"], body["event_action"], body["dedup_key"]) == (
        "rk",
        "trigger",
        "whale:0xabc",
    )
    assert body["payload"]["severity"] == "critical" and body["payload"]["source"] == "chain 1"
    long_key = "whale:" + "x" * 400
    digest = render.pagerduty_dedup_key(long_key)
    assert len(digest) <= 255 and digest == render.pagerduty_dedup_key(long_key)


def test_email_has_text_and_escaped_html_and_a_stable_message_id() -> None:
    msg = render.email_message(
        DELIVERY, EVENT, sender="t@example.com", to=["a@example.com"], prefix="[x]"
    )
    assert msg["Message-ID"] == f"<{DELIVERY}@trace-lite>"
    assert msg["Subject"] == "[x] [critical] whale: chain 1 block 85 tx 0xabc"
    html = msg.get_body(("html",))
    text = msg.get_body(("plain",))
    assert html is not None and text is not None
    assert "&lt;script&gt;" in html.get_content() and "<script>" not in html.get_content()
    assert "to: <script>" in text.get_content()


def test_sms_text_is_short() -> None:
    assert render.sms_text(EVENT) == "[critical] whale: chain 1 block 85 tx 0xabc"
    assert len(render.sms_text({**EVENT, "alert_name": "w" * 500})) == render.SMS_MAX_CHARS


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("Throttling", 400, "retry"),
        ("InternalError", 500, "retry"),
        ("Whatever", 503, "retry"),
        ("InvalidParameter", 400, "failed"),
        ("NotFound", 404, "failed"),
        ("AuthorizationError", 403, "failed"),
    ],
)
def test_sns_errors_retry_or_fail(code: str, status: int, expected: str) -> None:
    assert classify_error(code, status) == expected


def test_the_channel_examples_load() -> None:
    from trace_core.alerts.spec import load_alert_file
    from trace_core.settings import REPO_ROOT

    kinds = {
        path.stem: [c.kind for c in load_alert_file(path).spec.channels]
        for path in sorted((REPO_ROOT / "examples" / "alerts" / "channels").glob("*.yaml"))
    }
    assert kinds == {
        "email": ["email"],
        "pagerduty": ["pagerduty"],
        "slack": ["slack"],
        "sms": ["sms"],
    }
