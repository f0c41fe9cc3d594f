"""A worker run: execute a batch, then keep taking the work its commits made due.

``run_worker`` is what one ``trace_worker`` run does (the Dagster op only reports): claim the
batch, run ``TRACE_WORKER_CONCURRENCY`` tasks at a time, and as each task ends, until
``TRACE_WORKER_CONTINUE_SECONDS`` have passed, plan the ranges the commits freed, publish their
wake-ups and take as many woken tasks as there are idle threads, instead of ending and waiting
for the dispatcher and worker sensors to launch the next run. The run is a pipeline, not a
series of waves: no task waits for the slowest of a batch. A failure (``retry``/``dead``) ends
the run once its running tasks have: its retries run (and show) as runs of their own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import queue
import threading
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from trace_core import outbox, profile
from trace_core.engine import orgs
from trace_core.engine import registry as operator_registry
from trace_core.engine.execute import StateConn, TaskOutcome, claim_and_beat, run_claimed
from trace_core.engine.host_share import HostShare
from trace_core.engine.intake import Wakeup, ack_wakeups, wakeup_visibility_seconds
from trace_core.operators.base import OperatorRegistry
from trace_core.queue.base import TASK_WAKEUP, Message
from trace_core.runtime import Runtime
from trace_core.tasks.keepalive import LeaseHeartbeat
from trace_core.tasks.lifecycle import Lease
from trace_core.tasks.take import take, task_id_of

# A range a run planned: (job, stream, range start, range end, the job's org id).
PlannedRange = tuple[str, str, int, int, str]


@dataclass(frozen=True)
class MoreWork:
    """Work a worker run takes on after its batch: the ranges it planned (job, stream, range
    start, range end), the leases its take granted (``tasks.take``: those wake-ups are acked
    with the claims) and the woken tasks it will claim itself (a lease to take over, a
    backoff, a task this run ran). ``wakeups`` (of ``task_ids``) are acked only once those
    tasks are claimed (``ack``), so a run that dies first leaves them to be redelivered."""

    planned: list[PlannedRange]  # (job, stream, start, end, org id)
    task_ids: list[uuid.UUID]
    wakeups: list[Wakeup]
    received: int = 0  # wake-ups received, runnable or not (spent ones are acked and dropped)
    leases: list[Lease] = field(default_factory=list)

    def ack(self, rt: Runtime) -> None:
        ack_wakeups(rt, self.wakeups)

    def leave(self, rt: Runtime, task_ids: set[uuid.UUID], nacked: set[uuid.UUID]) -> MoreWork:
        """This work without ``task_ids`` (tasks this run already executed: a retry runs as a
        run of its own). Their wake-ups go back to the queue at once, the first time; a task
        in ``nacked`` (updated here) is left to the visibility timeout instead."""
        for w in self.wakeups:
            if w.task_id in task_ids and w.task_id not in nacked:
                nacked.add(w.task_id)
                rt.queue.nack(w.message)
        keep = [t for t in self.task_ids if t not in task_ids]
        wakeups = [w for w in self.wakeups if w.task_id not in task_ids]
        # the take's leases stay: it skipped ``task_ids`` (a lease dropped here would only lapse)
        return MoreWork(self.planned, keep, wakeups, self.received, self.leases)


def take_more_work(
    rt: Runtime,
    max_tasks: int,
    ended: Collection[tuple[str, str, str]] | None = None,
    *,
    skip: Collection[uuid.UUID] = (),
    state: StateConn | None = None,
) -> MoreWork:
    """Plan the ranges the batch just freed (``max_inflight``): of the streams in ``ended``
    (org id, job id, dataset key: whose ranges ended since the last take), or of every
    stream when None, as the dispatcher tick does; publish their wake-ups, and take up to
    ``max_tasks`` woken tasks (``tasks.take``: on pgqueue one statement receives them and
    claims the queued ones, not those in ``skip``; wake-ups of succeeded or dead tasks are
    acked and dropped). What a run does instead of ending and waiting for the next sensor
    ticks. ``state``: the run's connections for takes (``rt.reused_state(queue=True)``: the
    take scans pgqueue's table, so it wants pgqueue's planner options); default a new one."""
    s = rt.settings
    with rt.state() as conn:
        with profile.run_phase("take: plan"):
            if ended is None:
                result = orgs.plan_orgs(rt, conn, orgs.orgs_with_work(conn))
            else:
                result = orgs.plan_streams(rt, conn, ended)
        with profile.run_phase("take: publish"):
            outbox.drain_all(conn, rt.queue, batch_size=s.outbox_batch_size)
    planned = [
        (p.job_name, p.dataset_key, p.range_start, p.range_end, str(org.org_id))
        for org, p in result
    ]
    with profile.run_phase("take: receive"), contextlib.ExitStack() as stack:
        takes = state or stack.enter_context(rt.reused_state(queue=True))
        conn = stack.enter_context(takes())
        taken = take(
            conn,
            rt.queue,
            TASK_WAKEUP,
            max_tasks,
            lease_seconds=s.lease_seconds,
            visibility_timeout=wakeup_visibility_seconds(rt),
            skip=skip,
        )
    wakeups = [
        Wakeup(task_id, _generation(m), m)
        for m in taken.pending
        if (task_id := task_id_of(m)) is not None
    ]
    return MoreWork(
        planned,
        sorted({w.task_id for w in wakeups}),
        wakeups,
        taken.received,
        taken.leases,
    )


def _generation(message: Message) -> int:
    try:
        return int(message.payload.get("wakeup", 0))
    except (TypeError, ValueError):
        return 0


class _Reporter:
    """Calls ``on_outcome`` for each outcome put, in order, on one thread of its own. Leaving
    the block waits for every outcome to be reported and raises the first error (the later
    outcomes are still reported)."""

    def __init__(self, on_outcome: Callable[[TaskOutcome], None]) -> None:
        self._on_outcome = on_outcome
        self._queue: queue.SimpleQueue[TaskOutcome | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="trace-report", daemon=True)

    def put(self, outcome: TaskOutcome) -> None:
        self._queue.put(outcome)

    def _run(self) -> None:
        while (outcome := self._queue.get()) is not None:
            try:
                with profile.run_phase("report"):
                    self._on_outcome(outcome)
            except BaseException as exc:  # raised on the run's thread once all are reported
                self._error = self._error or exc

    def __enter__(self) -> _Reporter:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and exc_info[0] is None:
            raise self._error


@dataclass
class WorkerRunReport:
    """What one worker run did: batches executed, every task it was handed (all waves: a
    re-execution of a failed run revives them all) and the failure lines of its last batch."""

    batches: int = 0
    touched: list[uuid.UUID] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    shares: list[int] = field(default_factory=list)  # tasks at once, as each take re-read it


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
    """Execute ``task_ids``, then keep ``TRACE_WORKER_CONCURRENCY`` tasks running with the work
    the commits free, until the deadline, a failure, or no work is left. A free thread runs the
    claimed range furthest behind in its job first (``furthest_behind``).

    Every task is claimed before it is handed to a thread and runs under its own lease,
    heartbeat and fencing, as in ``execute_batch``. As tasks end, the run plans the ranges the
    commits freed and takes woken tasks until it holds ``TRACE_WORKER_BATCH_SIZE`` again (at
    least ``TRACE_WORKER_CONCURRENCY``), so a thread that ends finds its next task claimed: a
    pipeline, not waves (a slow range never holds the others' successors back). After a failure
    (``retry``/``dead``) or past ``TRACE_WORKER_CONTINUE_SECONDS`` it takes nothing more and
    ends once the running tasks have. ``on_outcome`` sees every outcome, in completion order,
    on the run's one reporter thread (what it reports, Dagster events, never delays the next
    takes); the run returns once every outcome was reported, and an error ``on_outcome`` raised
    is raised then. ``on_planned`` sees the ranges each take planned (before their tasks run),
    ``on_more`` the number of tasks of each further take (both on the calling thread).
    """
    s = rt.settings
    deadline = time.monotonic() + s.worker_continue_seconds
    registry = registry or operator_registry.default_registry()  # once per run
    _ = rt.dbs, rt.store  # built once, before threads share the runtime
    report = WorkerRunReport()
    concurrency = max(1, s.worker_concurrency)

    def hold_for(share: int) -> int:
        """Tasks held (claimed, running or next in line) while executing ``share`` at once: a
        thread that ends finds its next task claimed already, so the takes (planning,
        receiving, claiming) never leave one idle; no more, since a held task counts against
        its stream's ``max_inflight`` while it waits."""
        return max(share, s.worker_batch_size * share // concurrency)

    running: set[concurrent.futures.Future[TaskOutcome]] = set()  # handed to a thread
    waiting: list[tuple[Lease, LeaseHeartbeat]] = []  # claimed, for the next free thread
    share = concurrency  # of the host's budget (host_share), re-read at every take

    def submit_waiting() -> None:
        while waiting and len(running) < share:
            lease, hb = waiting.pop(furthest_behind([lease for lease, _ in waiting]))
            running.add(threads.submit(run_claimed, rt, lease, registry, hb, state=state))

    reporter = _Reporter(on_outcome)
    nacked: set[uuid.UUID] = set()
    # streams whose ranges ended since the last take: the only ones a take plans (after the
    # run's first take, which plans every stream as the dispatcher tick does)
    ended: set[tuple[str, str, str]] | None = None

    def handle(outcome: TaskOutcome) -> None:
        job, dataset = outcome.payload.get("job_id"), outcome.payload.get("dataset_key")
        if (
            ended is not None
            and outcome.org_id
            and isinstance(job, str)
            and isinstance(dataset, str)
        ):
            ended.add((str(outcome.org_id), job, dataset))
        line = failure_line(outcome)
        if line is not None:
            report.failures.append(line)
        reporter.put(outcome)

    def start(
        ids: list[uuid.UUID], on_claimed: Callable[[], None] | None, leases: Sequence[Lease] = ()
    ) -> None:
        report.batches += 1
        report.touched += [lease.task_id for lease in leases] + ids
        waiting.extend(claim_and_beat(rt, ids, state, handle, on_claimed, leases))
        submit_waiting()

    with (
        HostShare.join(rt) as host,
        rt.reused_state() as state,  # the run's claims and commits reuse their connections
        rt.reused_state(queue=True) as takes,  # and its takes theirs
        reporter,
        concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="trace-task"
        ) as threads,
    ):
        try:
            share = host.share()
            hold = hold_for(share)
            report.shares.append(share)
            start(task_ids, None)
            taking = True  # until a failure or the deadline
            fresh = True  # something ended since the last take found nothing
            while True:
                if taking and (report.failures or time.monotonic() >= deadline):
                    taking = False
                held = len(running) + len(waiting)
                # take once no claimed task waits for a thread: a take (planning above all)
                # per ``hold - share`` tasks ended, not per task
                if taking and fresh and held <= min(share, hold - 1):
                    share = host.share()
                    hold = hold_for(share)
                    if share != report.shares[-1]:
                        report.shares.append(share)
                    if held >= hold:  # the host's runs grew: run what is held first
                        fresh = False
                        continue
                    with profile.run_phase("take more work"):
                        touched = set(report.touched)
                        more = take_more_work(rt, hold - held, ended, skip=touched, state=takes)
                        ended = set()
                        more = more.leave(rt, touched, nacked)
                    if more.planned:
                        on_planned(more.planned)
                    if more.task_ids or more.leases:
                        if on_more is not None:
                            on_more(len(more.task_ids) + len(more.leases))
                        start(more.task_ids, functools.partial(more.ack, rt), more.leases)
                        continue
                    if more.received:  # only stale wake-ups: there may be more behind
                        continue
                    fresh = False
                if not running:
                    break
                done, _ = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    running.discard(future)
                    handle(future.result())
                submit_waiting()
                fresh = True
        finally:  # an error leaves: what is claimed still runs (the pool waits for it)
            for lease, hb in waiting:
                threads.submit(run_claimed, rt, lease, registry, hb, state=state)
            waiting.clear()
    return report


def furthest_behind(leases: list[Lease]) -> int:
    """Which claimed task a free thread runs next (an index into ``leases``): the range
    furthest behind in its job, i.e. with the lowest ``range_start`` above the job's lowest
    claimed one; the earliest claimed among equals and tasks that are not a job's ranges.

    A backfill's streams differ in cost per range (transactions fetch receipts, blocks do
    not): taken first come first served, the cheap streams finish early and the job's tail
    runs only the costly one, with fewer tasks left than threads. Behind first, the streams
    advance block by block together and finish together, every thread busy to the end."""
    lowest: dict[str, int] = {}
    keys: list[tuple[str, int] | None] = []
    for lease in leases:
        job, start = lease.payload.get("job_id"), lease.payload.get("range_start")
        if isinstance(job, str) and isinstance(start, int):
            keys.append((job, start))
            lowest[job] = min(lowest.get(job, start), start)
        else:
            keys.append(None)
    ahead = [0 if k is None else k[1] - lowest[k[0]] for k in keys]
    return min(range(len(leases)), key=lambda i: (ahead[i], i))
