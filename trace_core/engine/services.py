"""Service leases: one live holder per long-running service, kept by renewal.

The hot follower, hot compactor, sink drain and alert delivery run as long-lived Dagster
runs (``trace_dagster.service_runs``) whose op calls ``serve``. Each run holds its service's lease in Postgres state and
renews it every step; a run that dies stops renewing, the lease lapses within
``TRACE_LEASE_SECONDS``, and the service's sensor starts a new run. Dagster's storage may
still call the dead run STARTED (the default run launcher cannot check its workers), which
is why liveness is decided here, on the database clock, and not from run status.

``has_work`` is the cheap check a sensor makes before requesting a run at all. The steps
themselves (``ServiceSpec``) live in ``trace_core.engine.service_steps``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from trace_core.alerts.delivery import delivery_backlog
from trace_core.chain_sync.store import list_hot_jobs
from trace_core.db.queries import q
from trace_core.queue.base import BUFFER_QUEUE
from trace_core.runtime import Runtime

ServiceName = Literal["hot_follower", "hot_compactor", "sink", "alert_delivery"]
SERVICES: tuple[ServiceName, ...] = ("hot_follower", "hot_compactor", "sink", "alert_delivery")


def _leased(rt: Runtime, query: str, service: ServiceName, holder: str) -> bool:
    params = {
        "service": service,
        "holder": holder,
        "lease_seconds": float(rt.settings.lease_seconds),
    }
    with rt.state() as conn:
        return conn.execute(q("services", query), params).fetchone() is not None


def acquire(rt: Runtime, service: ServiceName, holder: str) -> bool:
    """Take (or keep) the lease for ``holder``; False while another holder's lease is live."""
    return _leased(rt, "acquire", service, holder)


def renew(rt: Runtime, service: ServiceName, holder: str) -> bool:
    """Extend ``holder``'s lease; False if it lapsed and another holder took it."""
    return _leased(rt, "renew", service, holder)


def release(rt: Runtime, service: ServiceName, holder: str) -> None:
    """Give the lease up (a no-op if ``holder`` no longer holds it)."""
    with rt.state() as conn:
        conn.execute(q("services", "release"), {"service": service, "holder": holder})


def holder(rt: Runtime, service: ServiceName) -> str | None:
    """The live holder of ``service``'s lease, if any."""
    with rt.state() as conn:
        row = conn.execute(q("services", "holder"), {"service": service}).fetchone()
    return None if row is None else str(row[0])


def has_work(rt: Runtime, service: ServiceName) -> bool:
    """Whether ``service`` has anything to do now (cheap: one query or queue stat)."""
    if service in ("hot_follower", "hot_compactor"):
        with rt.state() as conn:
            return bool(list_hot_jobs(conn, None, enabled_only=True))  # every org's
    if service == "sink":
        stats = rt.queue.stats(BUFFER_QUEUE)
        return stats.depth + stats.in_flight > 0
    return delivery_backlog(rt) > 0


@dataclass(frozen=True)
class Observation:
    """Something a step wants shown on an asset (``asset_path``, e.g. ``("hot", "chain_1")``)."""

    asset_path: tuple[str, ...]
    metadata: dict[str, Any]


@dataclass(frozen=True)
class StepReport:
    """One bounded step of a service: whether it did work, a line saying what, the
    observations to record, and the cursor to hand the next step."""

    worked: bool
    summary: str
    observations: list[Observation] = field(default_factory=list)
    cursor: str | None = None


Step = Callable[[Runtime, str | None, logging.Logger], StepReport]


@dataclass(frozen=True)
class ServiceSpec:
    """A service: its lease name, its bounded step, how often the step runs, and whether a
    run ends after ``TRACE_SERVICE_IDLE_EXIT_SECONDS`` without work."""

    name: ServiceName
    step: Step
    interval_seconds: float
    description: str
    exit_when_idle: bool = False


def serve(
    rt: Runtime,
    spec: ServiceSpec,
    holder: str,
    max_seconds: float,
    log: logging.Logger,
    emit: Callable[[Observation], None],
) -> int:
    """Hold ``spec``'s lease and run its step every ``interval_seconds`` until
    ``max_seconds`` (0: one step), idleness (``exit_when_idle``) or a lost lease.

    Returns the number of steps taken (0 when another holder has the lease).
    """
    if not acquire(rt, spec.name, holder):
        log.info(f"{spec.name}: another run holds the service lease; ending")
        return 0
    steps = 0
    try:
        started = last_work = time.monotonic()
        cursor: str | None = None
        while True:
            report = spec.step(rt, cursor, log)
            steps += 1
            cursor = report.cursor or cursor
            for observation in report.observations:
                emit(observation)
            now = time.monotonic()
            if report.worked:
                log.info(f"{spec.name}: {report.summary}")
                last_work = now
            if max_seconds <= 0 or now - started >= max_seconds:
                break
            if spec.exit_when_idle and now - last_work >= rt.settings.service_idle_exit_seconds:
                log.info(f"{spec.name}: idle for {now - last_work:.0f} s; ending")
                break
            if not _wait_renewing(rt, spec, holder, spec.interval_seconds):
                log.warning(f"{spec.name}: service lease lost to another run; ending")
                break
    finally:
        release(rt, spec.name, holder)
    return steps


def _wait_renewing(rt: Runtime, spec: ServiceSpec, holder: str, seconds: float) -> bool:
    """Sleep ``seconds``, renewing the lease at least every heartbeat; False once it is lost."""
    deadline = time.monotonic() + seconds
    while True:
        if not renew(rt, spec.name, holder):
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return True
        time.sleep(min(remaining, rt.settings.heartbeat_seconds))
