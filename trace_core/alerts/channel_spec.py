"""Alert channels: where an event goes, validated as strictly as the rest of the alert YAML.

A channel is a one-key mapping naming its type::

    channels:
      - webhook:   {url: "https://hooks.example.com/T0/abc"}        # generic JSON POST
      - slack:     {url_secret: slack_ops}                          # Slack incoming webhook
      - pagerduty: {routing_key_secret: pagerduty_ops}              # Events API v2
      - email:     {to: [oncall@example.com]}                       # SMTP from TRACE_SMTP_*
      - sms:       {phone_number: "+15555550100"}                   # AWS SNS
      - log: {}                                                     # one structured log line

Secrets never live in the YAML (nor in the state database that stores it): a ``*_secret``
field names ``TRACE_ALERT_SECRET_<NAME>``, read by the delivery process; SMTP credentials
come from ``TRACE_SMTP_*``. A plain ``url`` may still carry a token (webhooks, Slack): it is
never echoed in an error and is shown redacted everywhere.

``Channel.key`` is the channel's stable identity within an alert: rate limits and delivery
ids derive from it, so changing only a rate limit or timeout keeps pending deliveries.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

MAX_URL_CHARS = 2048
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
ChannelKind = Literal["webhook", "slack", "pagerduty", "email", "sms", "log"]
KINDS: tuple[ChannelKind, ...] = ("webhook", "slack", "pagerduty", "email", "sms", "log")
_SECRET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_EMAIL = re.compile(r"^[^@\s<>,;\"']{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$")


def _http_url(value: str) -> str:
    # never echo the value: webhook URLs carry tokens
    if len(value) > MAX_URL_CHARS:
        raise PydanticCustomError("url", "must be at most {n} characters", {"n": MAX_URL_CHARS})
    if any(c.isspace() for c in value):
        raise PydanticCustomError("url", "must not contain whitespace")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PydanticCustomError("url", "must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise PydanticCustomError("url", "must not carry user:password@; put a token in the path")
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise PydanticCustomError("url", "has an invalid port") from None
    return value


def _secret_name(value: str) -> str:
    if not _SECRET_NAME.match(value):
        raise PydanticCustomError(
            "secret_name",
            "must be a secret name like 'slack_ops' (lowercase letters, digits, '_'), read from "
            "TRACE_ALERT_SECRET_<NAME>; never the secret itself",
        )
    return value


def _email(value: str) -> str:
    if not _EMAIL.match(value):
        raise PydanticCustomError("email", "must be an email address like oncall@example.com")
    return value


def _one_line(value: str) -> str:
    if any(c in value for c in "\r\n"):
        raise PydanticCustomError("one_line", "must be a single line")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]
SecretName = Annotated[str, AfterValidator(_secret_name)]
RateLimit = Annotated[int, Field(gt=0, le=10_000)]
Timeout = Annotated[float, Field(gt=0, le=30)]


def redact_url(url: str) -> str:
    """``scheme://host[:port]/...``: enough to recognise a webhook, no path or query tokens."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/..."


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class WebhookChannel(_Model):
    """POST each new event as JSON to ``url`` (no redirects followed)."""

    url: HttpUrl
    rate_limit_per_minute: RateLimit = 60
    timeout_seconds: Timeout = 5.0

    def redacted_url(self) -> str:
        return redact_url(self.url)


class SlackChannel(_Model):
    """A Slack incoming webhook: a message with blocks. Exactly one of ``url`` (redacted
    everywhere, but stored with the alert) or ``url_secret`` (kept out of YAML and state)."""

    url: HttpUrl | None = None
    url_secret: SecretName | None = None
    rate_limit_per_minute: RateLimit = 60  # Slack allows about one message per second
    timeout_seconds: Timeout = 5.0

    @model_validator(mode="after")
    def _one_address(self) -> SlackChannel:
        if (self.url is None) == (self.url_secret is None):
            raise PydanticCustomError(
                "address", "slack needs exactly one of url or url_secret (the webhook address)"
            )
        return self


class PagerDutyChannel(_Model):
    """PagerDuty Events API v2: a ``trigger`` whose ``dedup_key`` is the alert event's
    dedupe key, so a resent delivery never opens a second incident."""

    routing_key_secret: SecretName
    url: HttpUrl = PAGERDUTY_EVENTS_URL  # events.eu.pagerduty.com for EU accounts
    rate_limit_per_minute: RateLimit = 60  # the Events API allows 120 per minute per key
    timeout_seconds: Timeout = 5.0


class EmailChannel(_Model):
    """A plain-text and HTML email through the SMTP server of ``TRACE_SMTP_*``."""

    to: Annotated[list[Annotated[str, AfterValidator(_email)]], Field(min_length=1, max_length=50)]
    subject_prefix: Annotated[str, Field(max_length=64), AfterValidator(_one_line)] = "[trace]"
    rate_limit_per_minute: RateLimit = 30


class SmsChannel(_Model):
    """An SMS through AWS SNS: to ``phone_number`` (E.164) or a ``topic_arn`` (a FIFO topic
    deduplicates resends by delivery id)."""

    phone_number: str | None = None
    topic_arn: str | None = None
    rate_limit_per_minute: RateLimit = 10

    @model_validator(mode="after")
    def _one_address(self) -> SmsChannel:
        if (self.phone_number is None) == (self.topic_arn is None):
            raise PydanticCustomError(
                "address",
                "sms needs exactly one of phone_number (E.164, like +15555550100) or topic_arn",
            )
        if self.phone_number is not None and not _E164.match(self.phone_number):
            raise PydanticCustomError(
                "address", "phone_number must be E.164: '+', country code and number, no spaces"
            )
        if self.topic_arn is not None and not _TOPIC_ARN.match(self.topic_arn):
            raise PydanticCustomError(
                "address", "topic_arn must look like arn:aws:sns:us-east-1:123456789012:alerts"
            )
        return self


class LogChannel(_Model):
    """Write each new event as one structured log line (counts as delivered)."""


class Channel(_Model):
    """Exactly one channel type (see the module doc)."""

    webhook: WebhookChannel | None = None
    slack: SlackChannel | None = None
    pagerduty: PagerDutyChannel | None = None
    email: EmailChannel | None = None
    sms: SmsChannel | None = None
    log: LogChannel | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_type(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [str(k)[:40] for k in data if k not in KINDS]
            if unknown:
                raise PydanticCustomError(
                    "channel",
                    "unknown channel type '{type}'; a channel is exactly one of {kinds}",
                    {"type": unknown[0], "kinds": ", ".join(KINDS)},
                )
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Channel:
        if sum(getattr(self, k) is not None for k in KINDS) != 1:
            raise PydanticCustomError(
                "channel", "a channel is exactly one of {kinds}", {"kinds": ", ".join(KINDS)}
            )
        return self

    @property
    def kind(self) -> ChannelKind:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def rate_limit_per_minute(self) -> int | None:
        """Attempts allowed per rolling minute on this channel (None: unlimited)."""
        conf = getattr(self, self.kind)
        return getattr(conf, "rate_limit_per_minute", None)

    @property
    def key(self) -> str:
        """Stable identity within the alert: ``log``, or the kind plus a digest of the
        address (never the address itself: it may carry a token)."""
        if self.webhook is not None:
            return "webhook:" + _digest(self.webhook.url)
        if self.slack is not None:
            return "slack:" + _digest(self.slack.url or f"secret:{self.slack.url_secret}")
        if self.pagerduty is not None:
            return "pagerduty:" + _digest(self.pagerduty.url, self.pagerduty.routing_key_secret)
        if self.email is not None:
            return "email:" + _digest(*sorted(a.lower() for a in self.email.to))
        if self.sms is not None:
            return "sms:" + _digest(self.sms.phone_number or self.sms.topic_arn or "")
        return "log"

    def describe(self) -> str:
        """A display form without secrets."""
        if self.webhook is not None:
            return f"webhook {self.webhook.redacted_url()}"
        if self.slack is not None:
            url = self.slack.url
            return f"slack {redact_url(url)}" if url else f"slack (secret {self.slack.url_secret})"
        if self.pagerduty is not None:
            return (
                f"pagerduty {redact_url(self.pagerduty.url)} "
                f"(routing key secret {self.pagerduty.routing_key_secret})"
            )
        if self.email is not None:
            more = f" +{len(self.email.to) - 1}" if len(self.email.to) > 1 else ""
            return f"email {self.email.to[0]}{more}"
        if self.sms is not None:
            phone = self.sms.phone_number
            return f"sms {phone[:3]}...{phone[-4:]}" if phone else f"sms {self.sms.topic_arn}"
        return "log"
