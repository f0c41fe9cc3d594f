"""Wake-up intake: receive task wake-ups, turn them into worker runs (recorded before the ack),
and re-wake the tasks of requested runs that will never claim them (stranded runs).

Wake-ups are hints; the claim in Postgres state is the authority (``engine.execute``). Both
ways a received wake-up can be lost come back within one lease (``TRACE_LEASE_SECONDS``):

- a wake-up received and neither acked nor claimed (its receiver died) is hidden for one lease
  only (``wakeup_visibility_seconds``), then delivered again;
- a run requested and launched that has not claimed its batch one lease after its launch died
  while starting (``recover_stranded``), whatever Dagster still says of it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row

from trace_core import outbox
from trace_core.chain_sync.planner import range_partition_key
from trace_core.db.queries import q
from trace_core.operators.payload import RangeLabel
from trace_core.queue.base import TASK_WAKEUP, Message
from trace_core.runtime import Runtime
from trace_core.tasks import retry as task_retry

log = logging.getLogger(__name__)

ORG_TAG = "trace/org"  # on every run and asset: the org whose work it is (docs/api.md)


@dataclass(frozen=True)
class Wakeup:
    task_id: uuid.UUID
    generation: int
    message: Message


@dataclass(frozen=True)
class TaskInfo:
    """What the worker sensor needs to label a run (read from state, not from the message)."""

    task_id: uuid.UUID
    operator: str
    status: str
    attempt: int
    payload: dict[str, Any]
    org_id: uuid.UUID | None = None


def wakeup_visibility_seconds(rt: Runtime) -> float:
    """How long a received wake-up stays hidden: one lease at most. Its receiver records or
    claims it at once (milliseconds), so a longer hiding only delays recovery when the receiver
    dies; a wake-up redelivered to a live receiver is harmless (the claim decides)."""
    s = rt.settings
    return float(min(s.visibility_timeout_seconds, s.lease_seconds))


def receive_wakeups(rt: Runtime, max_messages: int) -> list[Wakeup]:
    """Receive up to ``max_messages`` wake-ups, hidden for ``wakeup_visibility_seconds``;
    malformed ones are acked and dropped."""
    messages = rt.queue.receive(
        TASK_WAKEUP, max_messages, visibility_timeout=wakeup_visibility_seconds(rt)
    )
    wakeups: list[Wakeup] = []
    bad: list[Message] = []
    for msg in messages:
        try:
            wakeups.append(
                Wakeup(
                    uuid.UUID(str(msg.payload["task_id"])), int(msg.payload.get("wakeup", 0)), msg
                )
            )
        except (KeyError, ValueError, TypeError):
            log.warning("dropping malformed wake-up", extra={"message_id": msg.message_id})
            bad.append(msg)
    if bad:
        rt.queue.ack_batch(bad)
    return wakeups


def ack_wakeups(rt: Runtime, wakeups: list[Wakeup]) -> None:
    if wakeups:
        rt.queue.ack_batch([w.message for w in wakeups])


def record_runs(rt: Runtime, runs: list[tuple[str, list[uuid.UUID]]]) -> None:
    """Record requested worker runs (run key -> task ids) before their wake-ups are acked."""
    if runs:
        with rt.state() as conn, conn.transaction():
            task_retry.record_worker_runs(conn, runs)


@dataclass(frozen=True)
class LaunchState:
    """What the run launcher (Dagster) knows of a requested run: ``gone`` (no such run, or it
    ended), else when it was launched (epoch seconds; ``None`` while it waits for a slot)."""

    gone: bool = False
    launched_at: float | None = None


GONE = LaunchState(gone=True)
WAITING = LaunchState()


def recover_stranded(
    rt: Runtime,
    launch_state: Callable[[str], LaunchState],
    grace_seconds: float,
    *,
    now: Callable[[], float] = time.time,
) -> int:
    """Re-wake the tasks of requested runs that will never claim them, and publish now.

    A requested run whose tasks still wait (queued, untouched since the request) is stranded
    when ``launch_state(run_key)`` says it is gone (and it was requested at least
    ``min(grace_seconds, TRACE_LEASE_SECONDS)`` ago: it may not be recorded yet), or when it
    was launched at least one lease ago: a live run claims its whole batch as soon as its code
    runs, so one that has not claimed by then died while starting (its process killed while
    importing, or before its first claim; Dagster may show it started forever). A run still waiting for a
    launch slot is left alone. Returns the number of tasks re-woken.
    """
    lease = float(rt.settings.lease_seconds)
    grace = min(lease, grace_seconds)
    with rt.state() as conn:
        stranded = []
        for run in task_retry.open_worker_runs(conn, grace_seconds=grace):
            state = launch_state(run.run_key)
            launched = state.launched_at
            if state.gone or (launched is not None and now() - launched >= lease):
                stranded.append(run)
        if not stranded:
            return 0
        with conn.transaction():
            rewoken = task_retry.rewake_stranded(conn, stranded)
        outbox.drain_all(conn, rt.queue, batch_size=rt.settings.outbox_batch_size)
    return rewoken


def task_infos(rt: Runtime, task_ids: list[uuid.UUID]) -> dict[uuid.UUID, TaskInfo]:
    if not task_ids:
        return {}
    with rt.state() as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(q("tasks", "task_infos"), {"task_ids": task_ids}).fetchall()
    return {r["task_id"]: TaskInfo(**r) for r in rows}


@dataclass(frozen=True)
class WorkerRun:
    """One worker run to request: a deterministic run key, its batch, and labels for the UI."""

    run_key: str
    task_ids: list[str]
    tags: dict[str, str]


_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
# Dagster's tag limits: a key is ``prefix/name`` with name <= 63 of [A-Za-z0-9_.-]; a value
# <= 63 of the same characters to be filterable in the UI.
_TAG_MAX = 63


def task_tags(task_id: uuid.UUID | str, attempt: int, payload: dict[str, Any]) -> dict[str, str]:
    """The run tags one task of a batch contributes, so runs can be filtered by any range or
    task they touched: ``trace/range.<stream>.<range key>`` = job (a chain_sync range, keyed
    as its partition: ``000000000100-000000000200``) and
    ``trace/task.<task_id>`` = attempt."""
    tags = {f"trace/task.{task_id}": str(attempt)}
    label = RangeLabel.of(payload)
    if label.block_range is not None and label.dataset_key and label.job_name:
        stream = _TAG_UNSAFE.sub("_", label.dataset_key)
        start, end = label.block_range
        name = f"range.{stream}.{range_partition_key(start, end)}"[:_TAG_MAX]
        tags[f"trace/{name}"] = _TAG_UNSAFE.sub("_", label.job_name)[:_TAG_MAX]
    return tags


def run_labels(infos: list[TaskInfo]) -> dict[str, str]:
    """Run labels: job, stream, operator and batch size; the first task's id, attempt and range
    (``trace/task_id``, ``trace/attempt``, ``trace/range``); ``task_tags`` of every task of
    the batch (filter runs by ``trace/range.<stream>.<range key>``); the tasks' org
    (``trace/org``)."""
    first = infos[0]
    label = RangeLabel.of(first.payload)
    tags = {
        "trace/operator": first.operator,
        "trace/task_id": str(first.task_id),
        "trace/attempt": str(first.attempt + 1),
        "trace/batch_size": str(len(infos)),
    }
    if label.job_name is not None:
        tags["trace/job"] = label.job_name
    if label.dataset_key is not None:
        tags["trace/stream"] = label.dataset_key
    if label.block_range is not None:
        tags["trace/range"] = f"{label.range_start}-{label.range_end}"
    for info in infos:
        tags.update(task_tags(info.task_id, info.attempt + 1, info.payload))
    orgs = sorted({str(i.org_id) for i in infos if i.org_id is not None})
    if orgs:  # the org of the batch's tasks (a batch of several orgs names each)
        tags[ORG_TAG] = ",".join(orgs)
    return tags


def plan_worker_runs(rt: Runtime, max_runs: int) -> list[WorkerRun]:
    """Turn wake-ups into worker runs of ``worker_batch_size`` tasks each, then ack them.

    Tasks already succeeded or dead are dropped; a task woken twice runs once, keyed by its
    newest wake-up generation (so a re-wake gets a new run key); a run's tasks are one org's.
    Each run key is recorded with
    its tasks before the ack, so a run that never claims them is noticed (``recover_stranded``)
    instead of waiting for the re-wake.
    """
    batch = rt.settings.worker_batch_size
    wakeups = receive_wakeups(rt, batch * max_runs)
    infos = task_infos(rt, list({w.task_id for w in wakeups}))
    runnable: dict[str, tuple[TaskInfo, int]] = {}
    for w in wakeups:
        info = infos.get(w.task_id)
        if info is None or info.status in ("succeeded", "dead"):
            continue
        previous = runnable.get(str(w.task_id), (info, 0))[1]
        runnable[str(w.task_id)] = (info, max(w.generation, previous))
    # one org per run (its ``trace/org`` tag names it): batches never mix orgs' tasks
    by_org: dict[str, list[tuple[str, tuple[TaskInfo, int]]]] = {}
    for tid, item in sorted(runnable.items()):
        by_org.setdefault(str(item[0].org_id), []).append((tid, item))
    chunks = [
        items[i : i + batch]
        for _, items in sorted(by_org.items())
        for i in range(0, len(items), batch)
    ]
    runs: list[WorkerRun] = []
    for chunk in chunks:
        key_src = ",".join(f"{tid}:{gen}" for tid, (_, gen) in chunk)
        runs.append(
            WorkerRun(
                run_key=hashlib.sha256(key_src.encode()).hexdigest()[:32],
                task_ids=[tid for tid, _ in chunk],
                tags=run_labels([info for _, (info, _) in chunk]),
            )
        )
    record_runs(rt, [(r.run_key, [uuid.UUID(t) for t in r.task_ids]) for r in runs])
    ack_wakeups(rt, wakeups)
    return runs
