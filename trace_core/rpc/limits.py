"""Per-RPC-pool limits that hold across every stream, run and machine.

A pool's limits come from the environment, like its URL (never from YAML):

- ``TRACE_RPC_POOL_<POOL>_MAX_CONCURRENT``: cryo extractions against the pool at once. Each
  extraction holds a slot in Postgres state (``state.rpc_pool_slots``) for its attempt; a
  slot whose attempt lost its lease is free again, so a killed worker never leaks one.
- ``TRACE_RPC_POOL_<POOL>_REQUESTS_PER_SECOND``: the pool's total request rate. Each
  extraction gets an equal share (rate / max concurrent, handed to cryo's own
  ``requests_per_second``), so the total holds however the slots are spread. With a rate and
  no concurrency limit, the concurrency limit is ``DEFAULT_MAX_CONCURRENT_WITH_RATE``.

The limits cover cryo extractions (the bulk of the traffic); Trace's own probes, receipt
checks and the hot follower's tip polling are small and not counted.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from trace_core import profile
from trace_core.db.connection import StateConnect
from trace_core.db.queries import q
from trace_core.errors import ConfigError
from trace_core.settings import rpc_pool_env_var

log = logging.getLogger(__name__)


class Attempt(Protocol):
    """The attempt holding a slot (a ``tasks.lifecycle.Lease``)."""

    @property
    def task_id(self) -> uuid.UUID: ...

    @property
    def attempt(self) -> int: ...


DEFAULT_MAX_CONCURRENT_WITH_RATE = 4
SLOT_POLL_SECONDS = 0.5


def _limit_var(pool: str, suffix: str) -> str:
    """``TRACE_RPC_POOL_<POOL>_<SUFFIX>``, named like the pool's URL variable."""
    return rpc_pool_env_var(pool).removesuffix("_URL") + f"_{suffix}"


@dataclass(frozen=True)
class PoolLimits:
    max_concurrent: int | None = None
    requests_per_second: float | None = None

    @property
    def share_per_extraction(self) -> float | None:
        """The request rate one extraction may use so the pool's total holds."""
        if self.requests_per_second is None:
            return None
        return self.requests_per_second / (self.max_concurrent or 1)


def pool_limits(pool: str, environ: Mapping[str, str] | None = None) -> PoolLimits:
    """The pool's limits from the environment. Raises ``ConfigError`` naming a bad variable."""
    env = os.environ if environ is None else environ
    conc_var, rate_var = _limit_var(pool, "MAX_CONCURRENT"), _limit_var(pool, "REQUESTS_PER_SECOND")
    conc_raw, rate_raw = env.get(conc_var, "").strip(), env.get(rate_var, "").strip()
    concurrent: int | None = None
    rate: float | None = None
    if conc_raw:
        try:
            concurrent = int(conc_raw)
        except ValueError:
            raise ConfigError(f"{conc_raw!r} is not an integer", field=conc_var) from None
        if concurrent <= 0:
            raise ConfigError("must be a positive integer", field=conc_var)
    if rate_raw:
        try:
            rate = float(rate_raw)
        except ValueError:
            raise ConfigError(f"{rate_raw!r} is not a number", field=rate_var) from None
        if not rate > 0:
            raise ConfigError("must be a positive number", field=rate_var)
        concurrent = concurrent or DEFAULT_MAX_CONCURRENT_WITH_RATE
    return PoolLimits(concurrent, rate)


@contextmanager
def extraction_slot(
    state: StateConnect,
    pool: str,
    lease: Attempt,
    limits: PoolLimits,
    *,
    check: Callable[[], None],
    poll_seconds: float = SLOT_POLL_SECONDS,
) -> Iterator[int | None]:
    """Hold one of ``pool``'s extraction slots for ``lease``'s attempt (``None``: no limit).

    Waits until a slot is free, calling ``check`` between polls (it raises ``StaleAttempt``
    once the lease is lost, which ends the wait). The caller holds the lease.
    """
    slots = limits.max_concurrent
    if slots is None:
        yield None
        return
    params = {"pool": pool, "slots": slots, "task_id": lease.task_id, "attempt": lease.attempt}
    with state() as conn:
        conn.execute(q("rpc_limits", "ensure_slots"), params)
    waited = time.monotonic()
    with profile.phase("slot"):
        while True:
            with state() as conn:
                row = conn.execute(q("rpc_limits", "acquire_slot"), params).fetchone()
            if row is not None:
                slot = int(row[0])
                break
            check()
            time.sleep(poll_seconds)
    waited = time.monotonic() - waited
    if waited > poll_seconds:
        log.info(
            "rpc pool slot acquired",
            extra={"pool": pool, "slot": slot, "waited_seconds": round(waited, 2)},
        )
    try:
        yield slot
    finally:
        with state() as conn:
            conn.execute(q("rpc_limits", "release_slot"), {**params, "slot": slot})


def held_slots(state: StateConnect, pool: str) -> int:
    """Slots of ``pool`` held by attempts with a live lease (what status shows)."""
    with state() as conn:
        row = conn.execute(q("rpc_limits", "held_slots"), {"pool": pool}).fetchone()
    return 0 if row is None else int(row[0])
