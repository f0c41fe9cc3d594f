"""Service leases: one live holder per long-running service, kept by renewal.

The hot follower, hot compactor, sink drain and alert delivery run as long-lived Dagster
runs (``trace_dagster.services``). Each run holds its service's lease in Postgres state and
renews it every step; a run that dies stops renewing, the lease lapses within
``TRACE_LEASE_SECONDS``, and the service's sensor starts a new run. Dagster's storage may
still call the dead run STARTED (the default run launcher cannot check its workers), which
is why liveness is decided here, on the database clock, and not from run status.

``has_work`` is the cheap check a sensor makes before requesting a run at all.
"""

from __future__ import annotations

from typing import Literal

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
            return bool(list_hot_jobs(conn, rt.settings.org_id, enabled_only=True))
    if service == "sink":
        stats = rt.queue.stats(BUFFER_QUEUE)
        return stats.depth + stats.in_flight > 0
    return delivery_backlog(rt) > 0
