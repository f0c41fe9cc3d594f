"""Recovery while ``trace-lite run`` executes a run in process.

The driver executes the runs its sensors request one after another in its own process, and a
worker run keeps taking work for up to ``TRACE_WORKER_CONTINUE_SECONDS``: meanwhile no sensor
ticks. ``recovering`` keeps the sensors' recovery going in a thread for that time, as the
daemon's ticks would: expired leases are reaped (``dispatcher.reap_expired``) and the tasks of
runs that will never claim them re-woken (``intake.recover_stranded``), so the work of a run
killed earlier comes back within one lease even while a long run executes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager

from dagster import DagsterInstance

from trace_core.engine.dispatcher import reap_expired
from trace_core.engine.intake import WAITING, LaunchState, recover_stranded
from trace_core.runtime import Runtime
from trace_dagster.sensors.worker import RECOVERY_GRACE_SECONDS, launch_state

log = logging.getLogger(__name__)


def recovery_interval(rt: Runtime) -> float:
    """A tenth of a lease, between 0.5 and 2 s: recovery lands well inside the lease bound."""
    return max(0.5, min(2.0, rt.settings.lease_seconds / 10))


def recover_once(rt: Runtime, instance: DagsterInstance, pending: Collection[str] = ()) -> int:
    """Reap expired leases and re-wake stranded runs' tasks once; ``pending`` are run keys this
    process is about to execute (not stranded). Returns the number of tasks put back."""

    def state(run_key: str) -> LaunchState:
        return WAITING if run_key in pending else launch_state(instance, run_key)

    reaped = reap_expired(rt)
    return reaped.retried + reaped.rewoken + recover_stranded(rt, state, RECOVERY_GRACE_SECONDS)


@contextmanager
def recovering(
    rt: Runtime, instance: DagsterInstance, pending: Collection[str] = ()
) -> Iterator[None]:
    """Run ``recover_once`` every ``recovery_interval`` in a thread until the block ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(recovery_interval(rt)):
            try:
                if put_back := recover_once(rt, instance, pending):
                    log.warning("recovered %d task(s) while a run executes", put_back)
            except Exception as exc:  # noqa: BLE001 - like a failed tick: try again next time
                log.warning("recovery failed this time: %s: %s", type(exc).__name__, exc)

    thread = threading.Thread(target=loop, name="trace-recovery", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
