"""A worker run: execute a batch, then keep taking the work its commits made due.

``run_worker`` is what one ``trace_worker`` run does (the Dagster op only reports): execute the
batch (claim all, run ``TRACE_WORKER_CONCURRENCY`` at a time), then, until
``TRACE_WORKER_CONTINUE_SECONDS`` have passed, plan the ranges the batch freed, publish their
wake-ups and take up to ``TRACE_WORKER_BATCH_SIZE`` woken tasks as the next batch, instead of
ending and waiting for the dispatcher and worker sensors to launch the next run. A batch with a
failure (``retry``/``dead``) ends the run: its retries run (and show) as runs of their own.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from trace_core import outbox
from trace_core.chain_sync import planner
from trace_core.engine import registry as operator_registry
from trace_core.engine.execute import TaskOutcome, execute_batch
from trace_core.engine.intake import Wakeup, ack_wakeups, receive_wakeups, task_infos
from trace_core.operators.base import OperatorRegistry
from trace_core.runtime import Runtime

# A range a run planned: (job, stream, range start, range end).
PlannedRange = tuple[str, str, int, int]


@dataclass(frozen=True)
class MoreWork:
    """Work a worker run takes on after its batch: the ranges it planned (job, stream, range
    start, range end) and the woken tasks it will claim. ``wakeups`` are acked only once the
    tasks are claimed (``ack``), so a run that dies first leaves them to be redelivered."""

    planned: list[PlannedRange]
    task_ids: list[uuid.UUID]
    wakeups: list[Wakeup]

    def ack(self, rt: Runtime) -> None:
        ack_wakeups(rt, self.wakeups)


def take_more_work(rt: Runtime, max_tasks: int) -> MoreWork:
    """Plan the ranges the batch just freed (``max_inflight``), publish their wake-ups, and
    receive up to ``max_tasks`` runnable woken tasks (succeeded or dead ones are acked and
    dropped). What a run does instead of ending and waiting for the next sensor ticks."""
    s = rt.settings
    with rt.state() as conn:
        result = planner.plan_tick(
            conn, org_id=s.org_id, limit=s.dispatch_batch_size, pool_check=planner.pool_url_check(s)
        )
        outbox.drain_all(conn, rt.queue, batch_size=s.outbox_batch_size)
    planned = [(p.job_name, p.dataset_key, p.range_start, p.range_end) for p in result.planned]
    wakeups = receive_wakeups(rt, max_tasks)
    infos = task_infos(rt, list({w.task_id for w in wakeups}))
    runnable = {
        w.task_id
        for w in wakeups
        if w.task_id in infos and infos[w.task_id].status not in ("succeeded", "dead")
    }
    done = [w for w in wakeups if w.task_id not in runnable]
    ack_wakeups(rt, done)
    return MoreWork(planned, sorted(runnable), [w for w in wakeups if w.task_id in runnable])


@dataclass
class WorkerRunReport:
    """What one worker run did: batches executed, every task it was handed (all waves: a
    re-execution of a failed run revives them all) and the failure lines of its last batch."""

    batches: int = 0
    touched: list[uuid.UUID] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def failure_line(outcome: TaskOutcome) -> str | None:
    """The one line a failed outcome contributes to the run's failure, else ``None``."""
    if outcome.status in ("retry", "dead"):
        return (
            f"task {outcome.task_id} attempt {outcome.attempt} -> {outcome.status}: {outcome.error}"
        )
    return None


def run_worker(
    rt: Runtime,
    task_ids: list[uuid.UUID],
    *,
    on_outcome: Callable[[TaskOutcome], None],
    on_planned: Callable[[list[PlannedRange]], None],
    on_more: Callable[[int], None] | None = None,
    registry: OperatorRegistry | None = None,
) -> WorkerRunReport:
    """Execute ``task_ids``, then continue with the next waves until the deadline or a failure.

    ``on_outcome`` sees every outcome as it completes, ``on_planned`` the ranges each wave
    planned (before their tasks run), ``on_more`` the size of each further batch taken.
    """
    deadline = time.monotonic() + rt.settings.worker_continue_seconds
    registry = registry or operator_registry.default_registry()  # once per run
    report = WorkerRunReport()
    on_claimed: Callable[[], None] | None = None
    while task_ids:
        report.batches += 1
        report.touched += task_ids
        for outcome in execute_batch(
            rt,
            task_ids,
            concurrency=rt.settings.worker_concurrency,
            registry=registry,
            on_claimed=on_claimed,
        ):
            on_outcome(outcome)
            line = failure_line(outcome)
            if line is not None:
                report.failures.append(line)
        if report.failures or time.monotonic() >= deadline:
            break
        more = take_more_work(rt, rt.settings.worker_batch_size)
        on_planned(more.planned)
        task_ids = more.task_ids
        on_claimed = functools.partial(more.ack, rt)
        if task_ids and on_more is not None:
            on_more(len(task_ids))
    return report
