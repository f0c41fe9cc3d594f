"""Sending one delivery on its channel: HTTP (webhook, Slack, PagerDuty), email, SMS, log.

``Senders.send`` never raises for a network, protocol or service failure: each becomes a
``SendResult`` (delivered, retry, or failed for good) with one short error line. The HTTP
channels share one path (``post_json``): the destination is resolved and checked first
(link-local/metadata, multicast, reserved and unspecified addresses always refused,
loopback/private ones unless ``alert_webhook_allow_private``), one POST goes out through a
bare transport (an ``httpx.Client`` logs every URL, and URLs carry tokens), no redirect is
followed and the response body is never read. Errors never carry a URL, header or body.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from trace_core.alerts import render
from trace_core.alerts.channel_spec import (
    Channel,
    PagerDutyChannel,
    SlackChannel,
    WebhookChannel,
    redact_url,
)
from trace_core.alerts.outcome import SendResult, classify_status, parse_retry_after, scrub
from trace_core.settings import Settings, alert_secret, alert_secret_env_var

log = logging.getLogger(__name__)

USER_AGENT = "trace-lite-alerts/1"
_MAX_CODE_BYTES = 64
_ERROR_CODE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class DestinationRefused(Exception):
    """A webhook host resolving to an address deliveries must never reach."""


def check_destination(url: str, *, allow_private: bool) -> None:
    """Resolve the host and refuse link-local (cloud metadata), multicast, reserved and
    unspecified addresses, and loopback/private ones unless ``allow_private``.

    Raises ``DestinationRefused``; resolution failures raise ``OSError`` (retryable).
    Best effort: the HTTP client resolves again when it connects.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        ip = ipaddress.ip_address(info[4][0])
        if ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
            raise DestinationRefused(f"destination address {ip} is not allowed")
        if not allow_private and (ip.is_loopback or ip.is_private):
            raise DestinationRefused(f"destination address {ip} is private (not allowed)")


def _clean(message: str, url: str, *secrets: str) -> str:
    """An error text without the URL (which may carry a token) or secrets, bounded."""
    return scrub(message.replace(url, redact_url(url)), *secrets)


def post_json(
    transport: httpx.BaseTransport,
    url: str,
    body: Mapping[str, Any],
    *,
    timeout: float,
    allow_private: bool,
    headers: Mapping[str, str] | None = None,
    secrets: tuple[str, ...] = (),
    error_code: bool = False,
) -> SendResult:
    """POST ``body`` as JSON; the HTTP status decides the outcome (``classify_status``).

    ``error_code``: on a non-2xx answer, add a body that is one short snake_case token (Slack
    answers ``invalid_payload``, ``no_service``, ``channel_is_archived``) to the error."""
    try:
        check_destination(url, allow_private=allow_private)
    except DestinationRefused as exc:
        return SendResult("failed", error=str(exc))
    except OSError as exc:
        return SendResult("retry", error=_clean(f"cannot resolve host: {exc.strerror or exc}", url))
    request = httpx.Request(
        "POST",
        url,
        content=json.dumps(body, separators=(",", ":"), default=str).encode(),
        headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **(headers or {})},
        extensions={"timeout": httpx.Timeout(timeout).as_dict()},
    )
    try:
        response = transport.handle_request(request)
        try:
            status = response.status_code
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            code = _error_code(response) if error_code and not 200 <= status < 300 else None
        finally:
            response.close()
    except httpx.TimeoutException as exc:
        return SendResult("retry", error=f"timeout ({type(exc).__name__})")
    except httpx.TransportError as exc:
        return SendResult("retry", error=_clean(f"{type(exc).__name__}: {exc}", url, *secrets))
    outcome = classify_status(status)
    error = None
    if outcome != "delivered":
        error = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
        if code:
            error += f" {code}"
    return SendResult(outcome, status_code=status, error=error, retry_after=retry_after)


def _error_code(response: httpx.Response) -> str | None:
    """A short snake_case error token from the body, or None (nothing else is ever read)."""
    head = b""
    for chunk in response.iter_raw():
        head += chunk
        if len(head) > _MAX_CODE_BYTES:
            return None
    text = head.decode("ascii", errors="replace").strip()
    return text if _ERROR_CODE.match(text) else None


def send_webhook(
    transport: httpx.BaseTransport,
    channel: WebhookChannel,
    delivery: uuid.UUID,
    event: Mapping[str, Any],
    *,
    attempt: int,
    allow_private: bool,
) -> SendResult:
    """The generic webhook: ``Idempotency-Key: <delivery_id>`` on every attempt."""
    return post_json(
        transport,
        channel.url,
        render.webhook_body(delivery, event),
        timeout=channel.timeout_seconds,
        allow_private=allow_private,
        headers={"Idempotency-Key": str(delivery), "X-Trace-Delivery-Attempt": str(attempt)},
    )


def log_event(delivery: uuid.UUID, event: Mapping[str, Any]) -> SendResult:
    """The log channel: one structured line per event."""
    log.warning(
        "alert %s: %s",
        event["alert_name"],
        event["dedupe_key"],
        extra={
            "alert": event["alert_name"],
            "severity": event["severity"],
            "dedupe_key": event["dedupe_key"],
            "chain_id": event["chain_id"],
            "block_number": event["block_number"],
            "tx_hash": event["tx_hash"],
            "delivery_id": str(delivery),
        },
    )
    return SendResult("delivered")


def _missing_secret(name: str) -> SendResult:
    # the variable's name only: fixing it is the operator's move, then `dlq replay`
    return SendResult("failed", error=f"secret {alert_secret_env_var(name)} is not set")


@dataclass
class Senders:
    """Everything the channels need for one delivery step (shared by its sender threads)."""

    transport: httpx.BaseTransport
    settings: Settings
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    _sns: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send(
        self, channel: Channel, delivery: uuid.UUID, event: Mapping[str, Any], *, attempt: int
    ) -> SendResult:
        """One attempt on ``channel``; never raises for a failed send."""
        allow_private = self.settings.alert_webhook_allow_private
        if channel.webhook is not None:
            return send_webhook(
                self.transport,
                channel.webhook,
                delivery,
                event,
                attempt=attempt,
                allow_private=allow_private,
            )
        if channel.slack is not None:
            return self._slack(channel.slack, delivery, event)
        if channel.pagerduty is not None:
            return self._pagerduty(channel.pagerduty, event)
        if channel.email is not None:
            from trace_core.alerts.smtp import SmtpConfig, send_email

            return send_email(
                SmtpConfig.from_settings(self.settings), channel.email, delivery, event
            )
        if channel.sms is not None:
            from trace_core.alerts.sns import send_sms

            return send_sms(self._sns_client(), channel.sms, delivery, event)
        return log_event(delivery, event)

    def _slack(self, ch: SlackChannel, delivery: uuid.UUID, event: Mapping[str, Any]) -> SendResult:
        url = ch.url
        if ch.url_secret is not None:
            url = alert_secret(ch.url_secret, self.environ)
            if url is None:
                return _missing_secret(ch.url_secret)
        assert url is not None
        # Slack ignores idempotency headers: a resend after a crash mid-send may post twice
        return post_json(
            self.transport,
            url,
            render.slack_body(delivery, event),
            timeout=ch.timeout_seconds,
            allow_private=self.settings.alert_webhook_allow_private,
            secrets=(url,),
            error_code=True,
        )

    def _pagerduty(self, ch: PagerDutyChannel, event: Mapping[str, Any]) -> SendResult:
        key = alert_secret(ch.routing_key_secret, self.environ)
        if key is None:
            return _missing_secret(ch.routing_key_secret)
        return post_json(
            self.transport,
            ch.url,
            render.pagerduty_body(key, event),
            timeout=ch.timeout_seconds,
            allow_private=self.settings.alert_webhook_allow_private,
            secrets=(key,),
        )

    def _sns_client(self) -> Any:
        from trace_core.alerts.sns import sns_client

        with self._lock:
            if self._sns is None:
                self._sns = sns_client(self.settings)
            return self._sns
