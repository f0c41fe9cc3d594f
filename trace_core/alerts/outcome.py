"""The outcome of one send attempt, and what HTTP answers mean (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MAX_ERROR_CHARS = 300
_RETRY_STATUS = frozenset({408, 425, 429})

Outcome = Literal["delivered", "retry", "failed"]


@dataclass(frozen=True)
class SendResult:
    """``error`` is one short line for the delivery history: never a URL, secret or body."""

    outcome: Outcome
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None


def classify_status(status: int) -> Outcome:
    """What an HTTP status means for a delivery (redirects are not followed: permanent)."""
    if 200 <= status < 300:
        return "delivered"
    if status >= 500 or status in _RETRY_STATUS:
        return "retry"
    return "failed"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header in delta-seconds form (dates are ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def scrub(message: str, *secrets: str | None) -> str:
    """``message`` with every non-empty secret replaced by ``***``, bounded."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message[:MAX_ERROR_CHARS]
