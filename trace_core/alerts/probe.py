"""``trace-lite alerts test-channel``: one synthetic event sent to channels now.

No queue, no delivery row, no retry: the operator sees at once whether a channel's address,
secret and server work from this host (``Senders``, the same code the delivery step uses).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from trace_core.alerts.channel_spec import Channel
from trace_core.alerts.delivery import delivery_id
from trace_core.alerts.outcome import SendResult
from trace_core.alerts.send import Senders
from trace_core.settings import Settings


def synthetic_event(
    alert_name: str, severity: str, *, now: datetime | None = None
) -> dict[str, Any]:
    """A synthetic event for ``trace-lite alerts test-channel``: a fresh dedupe key each time
    (receivers that deduplicate must still show a second test)."""
    at = now or datetime.now(UTC)
    return {
        "dedupe_key": f"{alert_name}:test-channel:{at.strftime('%Y%m%dT%H%M%S.%fZ')}",
        "alert_name": alert_name,
        "severity": severity,
        "chain_id": 0,
        "block_number": 0,
        "block_hash": None,
        "tx_hash": None,
        "event_time": at,
        "payload": {"row": {"test": "sent by trace-lite alerts test-channel"}},
    }


def send_test(
    settings: Settings, alert_name: str, severity: str, channels: list[Channel]
) -> list[SendResult]:
    """Send one synthetic event to each channel, now (no queue, no retry); one result each."""
    event = synthetic_event(alert_name, severity)
    with httpx.HTTPTransport(retries=0) as transport:
        senders = Senders(transport, settings)
        return [
            senders.send(c, delivery_id(event["dedupe_key"], c.key), event, attempt=1)
            for c in channels
        ]
