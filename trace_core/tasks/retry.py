"""Retry and recovery in the task state machine: the retry policy (pure decisions about what a
failure does next) and re-waking tasks handed to a worker run that never ran them.

The worker sensor acks wake-ups when it requests a run, and records the run key with its
tasks (``record_worker_runs``). A run that starts claims its whole batch at once
(``engine.execute.execute_batch``), so if it dies its tasks come back when their leases expire.
What leases cannot cover is a run that never claimed: the request was lost with the process
that ticked, Dagster failed or canceled the run before it started, or its process died while
starting. ``open_worker_runs`` lists requested runs whose tasks still wait on them; the caller
asks its run launcher about each (``engine.intake.recover_stranded``) and passes the stranded
ones to ``rewake_stranded``, which re-wakes their waiting tasks through the outbox at once. Reviving dead tasks is ``chain_sync.revive``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from psycopg import Connection

from trace_core.db.queries import q
from trace_core.outbox import enqueue_wakeup

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class OpenRun:
    """A requested worker run and the tasks still waiting on it (empty: nothing waits)."""

    run_key: str
    waiting: tuple[uuid.UUID, ...]


def record_worker_runs(
    conn: Connection[Any], runs: Iterable[tuple[str, Sequence[uuid.UUID]]]
) -> None:
    """Record each requested run key with its task ids (a repeat of a key is a no-op)."""
    for run_key, task_ids in runs:
        conn.execute(
            q("tasks", "record_worker_run"), {"run_key": run_key, "task_ids": list(task_ids)}
        )


def open_worker_runs(
    conn: Connection[Any], *, grace_seconds: float, limit: int = 50
) -> list[OpenRun]:
    """Unsettled runs requested at least ``grace_seconds`` ago, oldest first.

    Runs with nothing waiting are settled here (their tasks were claimed, finished or re-woken
    since), so each run is looked at until its batch is in someone's hands, not forever.
    """
    rows = conn.execute(
        q("tasks", "open_worker_runs"), {"grace_seconds": float(grace_seconds), "limit": limit}
    ).fetchall()
    out: list[OpenRun] = []
    for run_key, waiting in rows:
        if waiting:
            out.append(OpenRun(run_key, tuple(waiting)))
        else:
            conn.execute(q("tasks", "settle_worker_run"), {"run_key": run_key, "rewoken": 0})
    return out


def rewake_stranded(conn: Connection[Any], runs: Iterable[OpenRun]) -> int:
    """Re-wake (through the outbox) the waiting tasks of runs that will never claim them, and
    settle those runs. Call inside a transaction. Returns the number of tasks re-woken.

    A task claimed or re-woken since it was read is skipped (re-checked under its row lock).
    """
    total = 0
    for run in runs:
        rewoken = 0
        for task_id in run.waiting:
            locked = conn.execute(
                q("tasks", "lock_waiting_task"), {"task_id": task_id, "run_key": run.run_key}
            ).fetchone()
            if locked is None:
                continue
            gen = conn.execute(q("tasks", "bump_wakeups"), {"task_id": task_id}).fetchone()
            assert gen is not None
            # a task in backoff is woken when due: a run woken now would only skip it
            enqueue_wakeup(conn, task_id=task_id, generation=gen[0], available_at=locked[1])
            rewoken += 1
        conn.execute(q("tasks", "settle_worker_run"), {"run_key": run.run_key, "rewoken": rewoken})
        if rewoken:
            log.warning(
                "worker run never claimed its tasks: re-woken",
                extra={"run_key": run.run_key, "tasks": rewoken},
            )
        total += rewoken
    conn.execute(q("tasks", "prune_settled_worker_runs"))
    return total


def outstanding_counts(conn: Connection[Any]) -> tuple[int, int, int]:
    """(tasks queued or running and not paused, dead tasks, pending outbox rows that are owed
    work)."""
    row = conn.execute(q("tasks", "outstanding_counts")).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])
