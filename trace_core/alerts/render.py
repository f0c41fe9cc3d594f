"""What each channel receives for one alert event: pure functions of the event row.

Every attempt of the same delivery renders the same bytes (no clock, no attempt number), so
a receiver that deduplicates by key or by content sees a resend as a duplicate.
"""

from __future__ import annotations

import hashlib
import html
import json
import uuid
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

PAGERDUTY_MAX_DEDUP_KEY = 255
PAGERDUTY_MAX_SUMMARY = 1024
SMS_MAX_CHARS = 300
MAX_ROW_FIELDS = 10
MAX_VALUE_CHARS = 200
_PAGERDUTY_SEVERITY = {"info": "info", "warning": "warning", "critical": "critical"}


def webhook_body(delivery: uuid.UUID, event: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON a webhook receives."""
    return {
        "delivery_id": str(delivery),
        "alert": event["alert_name"],
        "severity": event["severity"],
        "dedupe_key": event["dedupe_key"],
        "chain_id": event["chain_id"],
        "block_number": event["block_number"],
        "block_hash": event["block_hash"],
        "tx_hash": event["tx_hash"],
        "event_time": event["event_time"].isoformat(),
        "payload": event["payload"],
    }


def summary(event: Mapping[str, Any]) -> str:
    """One line naming the alert, chain, block and transaction."""
    tx = f" tx {event['tx_hash']}" if event.get("tx_hash") else ""
    return (
        f"[{event['severity']}] {event['alert_name']}: chain {event['chain_id']} "
        f"block {event['block_number']}{tx}"
    )


def row_fields(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The condition's result row as (column, text) pairs, bounded for chat and mail."""
    payload = event.get("payload") or {}
    row = payload.get("row") if isinstance(payload, Mapping) else None
    if not isinstance(row, Mapping):
        return []
    out = []
    for name, value in list(row.items())[:MAX_ROW_FIELDS]:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out.append((str(name), text[:MAX_VALUE_CHARS]))
    return out


def slack_body(delivery: uuid.UUID, event: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` (notifications, fallback) and blocks."""
    fields = [
        {"type": "mrkdwn", "text": f"*{name}*\n`{value}`"} for name, value in row_fields(event)
    ]
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": f"{event['alert_name']} ({event['severity']})"},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": summary(event)}},
    ]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"dedupe key `{event['dedupe_key']}` · delivery {delivery}",
                }
            ],
        }
    )
    return {"text": summary(event), "blocks": blocks}


def pagerduty_dedup_key(dedupe_key: str) -> str:
    """The event's dedupe key, or a digest of it when longer than PagerDuty accepts."""
    if len(dedupe_key) <= PAGERDUTY_MAX_DEDUP_KEY:
        return dedupe_key
    return "trace:sha256:" + hashlib.sha256(dedupe_key.encode()).hexdigest()


def pagerduty_body(routing_key: str, event: Mapping[str, Any]) -> dict[str, Any]:
    """An Events API v2 ``trigger``; ``dedup_key`` is the alert's dedupe key."""
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": pagerduty_dedup_key(event["dedupe_key"]),
        "client": "trace-lite",
        "payload": {
            "summary": summary(event)[:PAGERDUTY_MAX_SUMMARY],
            "source": f"chain {event['chain_id']}",
            "severity": _PAGERDUTY_SEVERITY.get(event["severity"], "warning"),
            "timestamp": event["event_time"].isoformat(),
            "component": event["alert_name"],
            "custom_details": {
                "dedupe_key": event["dedupe_key"],
                "block_number": event["block_number"],
                "block_hash": event["block_hash"],
                "tx_hash": event["tx_hash"],
                "row": dict(row_fields(event)),
            },
        },
    }


def email_message(
    delivery: uuid.UUID, event: Mapping[str, Any], *, sender: str, to: list[str], prefix: str
) -> EmailMessage:
    """A multipart/alternative mail (plain text and HTML). ``Message-ID`` derives from the
    delivery id, so a resend after a crash carries the same id."""
    msg = EmailMessage()
    msg["Subject"] = f"{prefix} {summary(event)}".strip()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Message-ID"] = f"<{delivery}@trace-lite>"
    msg["Date"] = formatdate(event["event_time"].timestamp(), usegmt=True)
    msg["X-Trace-Delivery-Id"] = str(delivery)
    msg["X-Trace-Dedupe-Key"] = event["dedupe_key"]
    rows = row_fields(event)
    text = [summary(event), "", f"dedupe key: {event['dedupe_key']}"]
    if event.get("block_hash"):
        text.append(f"block hash: {event['block_hash']}")
    text.append(f"event time: {event['event_time'].isoformat()}")
    text += [""] + [f"{name}: {value}" for name, value in rows]
    msg.set_content("\n".join(text) + "\n")
    cells = "".join(
        f"<tr><th align='left'>{html.escape(n)}</th><td><code>{html.escape(v)}</code></td></tr>"
        for n, v in rows
    )
    msg.add_alternative(
        "<html><body>"
        f"<h2>{html.escape(event['alert_name'])} ({html.escape(event['severity'])})</h2>"
        f"<p>{html.escape(summary(event))}</p>"
        f"<table>{cells}</table>"
        f"<p><small>dedupe key <code>{html.escape(event['dedupe_key'])}</code></small></p>"
        "</body></html>",
        subtype="html",
    )
    return msg


def sms_text(event: Mapping[str, Any]) -> str:
    """A short message (one or two SMS segments)."""
    return summary(event)[:SMS_MAX_CHARS]
