"""``trace-lite`` that SIGKILLs itself at a named point of a worker run (the recovery tests).

``python -m tests.e2e.killpoints run --until-idle`` is ``trace-lite run --until-idle`` with one
function wrapped: once ``KILL_AFTER`` ranges have committed, the process writes the ids of the
tasks it holds (unclaimed, or claimed with no heartbeat yet) to ``KILL_NOTE`` and sends itself
SIGKILL (no cleanup, no ``finally``, as the OOM killer or a lost host would) at ``KILL_AT``:

- ``before_claim``: a worker run has started (Dagster shows it started) and has not claimed its
  batch: the worker sensor recorded the run and acked its wake-ups;
- ``between_waves``: a continuing run took its next wave (``tasks.take`` claimed the queued
  tasks and acked their wake-ups in one transaction) and has not started their heartbeats
  (nor claimed the others, nor acked their wake-ups).

With ``STANDBY_UNTIL`` set it is the restart instead: it imports what ``trace-lite run`` imports
(Dagster, the definitions), then waits until that file exists before it runs, so a recovery
test times Trace's recovery from the moment of the kill, not Python's start-up on a loaded box.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trace_core.runtime import Runtime


def _committed(rt: Runtime) -> int:
    with rt.state() as conn:
        row = conn.execute("SELECT count(*) FROM state.tasks WHERE status = 'succeeded'").fetchone()
    return int(row[0]) if row else 0


def _die_holding(task_ids: list[uuid.UUID]) -> None:
    Path(os.environ["KILL_NOTE"]).write_text(json.dumps([str(t) for t in task_ids]))
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, after: int) -> None:
    """Wrap the function behind ``point`` (see the module docstring)."""
    if point == "before_claim":
        import trace_dagster.jobs as jobs

        real_run: Callable[..., Any] = jobs.run_worker

        def run_worker(rt: Runtime, task_ids: list[uuid.UUID], **kw: Any) -> Any:
            if _committed(rt) >= after:
                _die_holding(task_ids)
            return real_run(rt, task_ids, **kw)

        jobs.run_worker = run_worker  # type: ignore[assignment]
    elif point == "between_waves":
        import trace_core.engine.worker_run as worker_run

        real_take: Callable[..., Any] = worker_run.take_more_work

        def take_more_work(rt: Runtime, max_tasks: int, *args: Any, **kw: Any) -> Any:
            more = real_take(rt, max_tasks, *args, **kw)
            taken = [lease.task_id for lease in more.leases] + more.task_ids
            if taken and _committed(rt) >= after:
                _die_holding(taken)
            return more

        worker_run.take_more_work = take_more_work  # type: ignore[assignment]
    else:
        raise SystemExit(f"unknown KILL_AT {point!r}")


def standby(go: Path) -> None:
    """Do the slow imports of ``trace-lite run``, then wait for ``go`` to exist."""
    import dagster  # noqa: F401

    import trace_dagster.definitions  # noqa: F401
    import trace_dagster.driver  # noqa: F401

    while not go.exists():
        time.sleep(0.02)


if __name__ == "__main__":
    from trace_lite.cli import main

    if point := os.environ.get("KILL_AT"):
        install(point, int(os.environ.get("KILL_AFTER", "0")))
    if go := os.environ.get("STANDBY_UNTIL"):
        standby(Path(go))
    main()
