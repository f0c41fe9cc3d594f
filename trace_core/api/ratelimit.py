"""Per-key rate limits of the HTTP API (the ``limits`` library, moving windows in memory).

``TRACE_API_RATE_LIMIT`` is one or more limits separated by ``;`` in ``limits``' notation
(``"20/second;600/minute"``, the default); every request of one API key counts against each,
and the first one exhausted refuses the request with 429 and a ``Retry-After`` header. Windows
are kept per Query Service process: behind N replicas a key gets up to N times the limit.
Requests that did not authenticate are counted per client address instead, so guessing keys
is limited too.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from trace_core.errors import ApiRefused, ConfigError


def parse_limits(text: str) -> list[RateLimitItem]:
    """The limits of ``TRACE_API_RATE_LIMIT``; ``ConfigError`` naming the setting if invalid."""
    try:
        items = parse_many(text)
    except ValueError as exc:
        raise ConfigError(
            f"invalid rate limit {text!r}: {exc}", field="TRACE_API_RATE_LIMIT"
        ) from None
    if not items:
        raise ConfigError("no rate limit given", field="TRACE_API_RATE_LIMIT")
    return list(items)


class RateLimiter:
    """``check(identity)`` counts one request and raises ``ApiRefused`` (429) past a limit."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.items = parse_limits(text)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def check(self, identity: str) -> None:
        for item in self.items:
            if not self._limiter.hit(item, identity):
                stats = self._limiter.get_window_stats(item, identity)
                retry = max(1, math.ceil(stats.reset_time - time.time()))
                raise ApiRefused(
                    f"rate limit {item} exceeded; retry in {retry} s",
                    code="rate_limited",
                    status=429,
                    retry_after=retry,
                )
