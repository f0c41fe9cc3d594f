"""A service run ends promptly when interrupted (``dagster dev`` stopping sends SIGTERM to its
process group; terminating a run from the UI sends SIGINT).

The service op carries a RetryPolicy for transient failures, and Dagster applies a step's
retry policy to interrupts too: left alone, the interrupt became a retry five seconds later and
the service kept serving until ``trace-lite demo``/``down`` killed its group after 20 s ("dagster
did not stop in 20s; killing it" at every exit). Dagster's own harness runs the real sink
service job in process; the interrupt is a real SIGINT delivered to this process.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from dagster import DagsterEventType, DagsterInstance

from trace_core.engine import services
from trace_core.runtime import Runtime
from trace_dagster.resources import TraceResource
from trace_dagster.service_runs import sink_job


def _interrupt_once_serving(rt: Runtime, done: threading.Event) -> None:
    """SIGINT this process once the run holds the sink lease (so the op's handler is in)."""
    while not done.is_set():
        if services.holder(rt, "sink") is not None:
            os.kill(os.getpid(), signal.SIGINT)
            return
        time.sleep(0.05)


def test_an_interrupted_service_run_ends_instead_of_retrying(
    trace_env: Runtime, dagster_instance: DagsterInstance
) -> None:
    done = threading.Event()
    interrupter = threading.Thread(target=_interrupt_once_serving, args=(trace_env, done))
    interrupter.start()
    try:
        result = sink_job.execute_in_process(
            run_config={"ops": {"sink_loop": {"config": {"max_seconds": 120.0}}}},
            instance=dagster_instance,
            resources={"trace": TraceResource()},
            raise_on_error=False,
        )
    finally:
        done.set()
        interrupter.join()
    kinds = {e.event_type for e in result.all_events}
    assert DagsterEventType.STEP_UP_FOR_RETRY not in kinds  # the interrupt is not a failure
    assert DagsterEventType.STEP_RESTARTED not in kinds
    assert result.success
    messages = [
        e.message or "" for e in dagster_instance.all_logs(result.run_id) if e.dagster_event is None
    ]
    assert any("sink: interrupted; ending" in m for m in messages)
    assert services.holder(trace_env, "sink") is None  # the lease was released on the way out
