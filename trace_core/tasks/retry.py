"""Retry policy: pure decisions about what a failure does next."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff ``min(max, base * 2**(attempt-1))``; no jitter so tests are exact."""

    base_seconds: float = 5.0
    max_seconds: float = 300.0

    def delay(self, attempt: int) -> float:
        if self.base_seconds <= 0:
            return 0.0
        return float(min(self.max_seconds, self.base_seconds * 2 ** max(0, attempt - 1)))

    def decide(
        self, *, fatal: bool, attempt: int, max_attempts: int
    ) -> tuple[Literal["retry", "dead"], float]:
        """What to do after attempt ``attempt`` failed: retry after a delay, or end dead."""
        if fatal or attempt >= max_attempts:
            return "dead", 0.0
        return "retry", self.delay(attempt)
