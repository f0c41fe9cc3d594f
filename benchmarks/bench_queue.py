"""pgqueue and task lifecycle throughput on the embedded Postgres.

Measures, on a fresh embedded server (temporary home):

- baseline: raw psycopg on ``state.queue_messages`` in the same run, the methods behind the
  issue's anchors (one INSERT per transaction; COPY of 100-row batches; SKIP LOCKED receive
  plus ack by id and receipt), single connection, durable commits;
- publish: ``PgQueue.publish`` (batch 1) / ``publish_batch`` (batch 100);
- receive+ack: ``receive`` + ``ack`` (batch 1) / ``ack_batch`` (batch 100) of a backlog;
- full: publishers and consumers running together, publish -> receive -> fenced ack;
- lifecycle: create_task (+ outbox row) -> outbox drain -> publish -> receive -> claim ->
  no-op operator -> complete_success -> ack, with 4 workers.

Each runs with 1 and 4 workers (publishers, consumers, task workers), each worker a forked
process with its own driver and connections, as Trace runs them (workers are Dagster runs);
``--workers-as threads`` runs them as threads of one process instead (one GIL: then the client
side of one Python process is what is measured, not the queue). At batch 1 a consumer acks
what it finished as it receives the next (``QueueDriver.ack_receive``) when the code measured
has it, and a task worker completes outside a transaction (one statement). Ratios are against the
issue's anchors (publish 3.5k/s one row per tx, 77k/s COPY batches; receive+fenced ack 2k/s
at batch 1, 35k/s at batch 100) and against the raw baseline of this run.
Targets (issue 25): full >= 4,000 msg/s at batch 1 and >= 20,000 at batch 100; lifecycle
>= 1,000 tasks/s, with workers receiving one wake-up at a time (batch 1, the common case on a
slow RPC) and ten at a time.

Run: .venv/bin/python benchmarks/bench_queue.py [--messages N] [--tasks N] [--repeat N]

``--baseline-ref main`` runs two arms on one Postgres server, each repetition in turn: REF's
trace_core (``git archive`` into a temporary directory) and this tree's, both under this
bench script (``--baseline-harness ref``: REF's own script) as subprocesses with the same
arguments, and prints each arm's best and the ratio this tree / REF, so that a loaded box
affects both arms alike.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from _queue_arms import compare
from _scratch import scratch_databases

from trace_core import outbox
from trace_core import tasks as trace_tasks
from trace_core.db.connection import connect
from trace_core.errors import LeaseConflict
from trace_core.queue.base import TASK_WAKEUP
from trace_core.queue.pgqueue import PgQueue
from trace_core.tasks import claim, complete_success, create_task

ANCHORS = {
    ("publish", 1): 3_500,
    ("publish", 100): 77_000,
    ("receive+ack", 1): 2_000,
    ("receive+ack", 100): 35_000,
}
TARGETS = {
    ("full", 1): 4_000,
    ("full", 100): 20_000,
    ("lifecycle", 1): 1_000,
    ("lifecycle", 10): 1_000,
}
WAIT = 0.05  # a consumer with nothing due polls for up to this long (backing off from 10 ms)
PAYLOAD = {"task_id": "00000000-0000-0000-0000-000000000000", "wakeup": 1}


@dataclass(frozen=True)
class Result:
    phase: str
    batch: int
    workers: int
    messages: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def _run(n: int, prepare: Callable[[int], Callable[[], None]], processes: bool) -> float:
    """Run ``prepare(i)()`` for i < n on n threads or forked processes; wall seconds of the
    work alone (each ``prepare`` opens its connections before the clock starts). Re-raises
    the first thread error; a process that fails makes this raise."""
    if processes:
        return _processes(n, prepare)
    errors: list[BaseException] = []
    ready = threading.Barrier(n + 1)

    def run(i: int) -> None:
        try:
            work = prepare(i)
        except BaseException as exc:  # surfaced after join
            errors.append(exc)
            ready.abort()
            return
        try:
            ready.wait()
            work()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def _processes(n: int, prepare: Callable[[int], Callable[[], None]]) -> float:
    """``_run`` on forked processes (the parent holds no pool threads or connections then):
    the work's span from the first start to the last end, each taken in its process."""
    ctx = mp.get_context("fork")
    ready = ctx.Barrier(n + 1)
    spans = ctx.Array("d", 2 * n)

    def run(i: int) -> None:
        work = prepare(i)
        ready.wait()
        spans[2 * i] = time.monotonic()
        work()
        spans[2 * i + 1] = time.monotonic()

    procs = [ctx.Process(target=run, args=(i,), daemon=True) for i in range(n)]
    for p in procs:
        p.start()
    ready.wait(timeout=120)
    for p in procs:
        p.join()
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} worker process(es) failed: exit codes {failed}")
    return max(spans[1::2]) - min(spans[0::2])


def _split(total: int, parts: int, i: int) -> int:
    return total // parts + (1 if i < total % parts else 0)


def _driver(state_url: str, pool_size: int = 1) -> PgQueue:
    driver = PgQueue(state_url, max_receive_count=5, pool_size=pool_size)
    driver.open()
    return driver


def publisher(state_url: str, queue: str, todo: int, batch: int) -> Callable[[], None]:
    """A publisher's work: ``todo`` messages, one or ``batch`` per call, on its own driver."""
    driver = _driver(state_url)

    def work() -> None:
        left = todo
        try:
            while left > 0:
                if batch == 1:
                    driver.publish(queue, PAYLOAD)
                    left -= 1
                else:
                    k = min(batch, left)
                    driver.publish_batch(queue, [PAYLOAD] * k)
                    left -= k
        finally:
            driver.close()

    return work


def consumer(state_url: str, queue: str, n: int, batch: int, done: Any) -> Callable[[], None]:
    """A consumer's work on its own driver: receive + fenced ack until ``done`` (a shared
    counter) reaches ``n``. At batch 1 the ack of a message rides with the next receive when
    the driver offers it (``PgQueue.ack_receive``)."""
    driver = _driver(state_url)
    combined = batch == 1 and hasattr(driver, "ack_receive")

    def work() -> None:
        held: list[Any] = []
        try:
            while True:
                with done.get_lock():
                    if done.value >= n:
                        break
                if combined:
                    stale, got = driver.ack_receive(held, queue, 1, visibility_timeout=60)
                    assert stale == []
                    _count(done, len(held))
                    if not got:  # nothing due: wait for one as the plain consumer does
                        got = driver.receive(queue, 1, visibility_timeout=60, wait_seconds=WAIT)
                    held = got
                    continue
                got = driver.receive(queue, batch, visibility_timeout=60, wait_seconds=WAIT)
                if not got:
                    continue
                if batch == 1:
                    for m in got:
                        driver.ack(m)
                else:
                    assert driver.ack_batch(got) == []
                _count(done, len(got))
            if held:
                assert driver.ack_batch(held) == []
        finally:
            driver.close()

    return work


def _count(done: Any, k: int) -> None:
    if k:
        with done.get_lock():
            done.value += k


def bench_queue(state_url: str, n: int, batch: int, workers: int, processes: bool) -> list[Result]:
    ctx = mp.get_context("fork")
    q = f"bench-{uuid.uuid4().hex[:8]}"
    pub = _run(
        workers,
        lambda i: publisher(state_url, q, _split(n, workers, i), batch),
        processes,
    )
    done = ctx.Value("q", 0)
    con = _run(workers, lambda i: consumer(state_url, q, n, batch, done), processes)
    _vacuum(state_url)
    q = f"bench-{uuid.uuid4().hex[:8]}"
    done = ctx.Value("q", 0)

    def role(i: int) -> Callable[[], None]:
        if i < workers:
            return consumer(state_url, q, n, batch, done)
        return publisher(state_url, q, _split(n, workers, i - workers), batch)

    full = _run(2 * workers, role, processes)
    with _driver(state_url) as driver:
        assert driver.stats(q).depth == 0
    _vacuum(state_url)
    return [
        Result("publish", batch, workers, n, pub),
        Result("receive+ack", batch, workers, n, con),
        Result("full", batch, workers, n, full),
    ]


RAW_RECEIVE = """
UPDATE state.queue_messages SET receipt = gen_random_uuid(), receive_count = receive_count + 1,
    available_at = now() + interval '60 s', invisible_until = now() + interval '60 s'
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM state.queue_messages WHERE queue_name = 'raw' AND available_at <= now()
    ORDER BY available_at LIMIT %s FOR UPDATE SKIP LOCKED))
RETURNING message_id, receipt
"""
RAW_ACK = """
DELETE FROM state.queue_messages m USING unnest(%s::bigint[], %s::uuid[]) AS a (id, r)
WHERE m.message_id = a.id AND m.receipt = a.r
"""


def baseline(state_url: str, n_single: int, n: int) -> list[Result]:
    """Raw psycopg on one connection (default durable commits), the anchors' methods: one
    INSERT per transaction, COPY of 100-row batches, and a receive (SKIP LOCKED update with a
    new receipt) plus a fenced ack (delete by id and receipt) at batch 1 and 100."""
    body = json.dumps(PAYLOAD)
    out = []
    with psycopg.connect(state_url, autocommit=True) as conn:
        t0 = time.perf_counter()
        for _ in range(n_single):
            conn.execute(
                "INSERT INTO state.queue_messages (queue_name, payload) VALUES (%s, %s::jsonb)",
                ("raw", body),
            )
        out.append(Result("baseline publish", 1, 1, n_single, time.perf_counter() - t0))
        t0 = time.perf_counter()
        for _ in range(n_single):
            rows = conn.execute(RAW_RECEIVE, (1,)).fetchall()
            conn.execute(RAW_ACK, ([r[0] for r in rows], [r[1] for r in rows]))
        out.append(Result("baseline recv+ack", 1, 1, n_single, time.perf_counter() - t0))
        t0 = time.perf_counter()
        for _ in range(n // 100):
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy("COPY state.queue_messages (queue_name, payload) FROM STDIN") as cp,
            ):
                for _ in range(100):
                    cp.write_row(("raw", body))
        out.append(Result("baseline publish", 100, 1, n // 100 * 100, time.perf_counter() - t0))
        t0 = time.perf_counter()
        for _ in range(n // 100):
            rows = conn.execute(RAW_RECEIVE, (100,)).fetchall()
            conn.execute(RAW_ACK, ([r[0] for r in rows], [r[1] for r in rows]))
        out.append(Result("baseline recv+ack", 100, 1, n // 100 * 100, time.perf_counter() - t0))
        left = conn.execute("SELECT count(*) FROM state.queue_messages WHERE queue_name = 'raw'")
        assert left.fetchone() == (0,)
    _vacuum(state_url)
    return out


def dispatcher(state_url: str, tasks: int, succeeded: Any) -> Callable[[], None]:
    """The lifecycle's dispatcher: creates the tasks (+ outbox rows, 100 per transaction, with
    ``create_tasks`` when the code measured has it), drains the outbox, and keeps draining
    until every task succeeded."""
    conn = connect(state_url, autocommit=True)
    driver = _driver(state_url)

    bulk = getattr(trace_tasks, "create_tasks", None)

    def work() -> None:
        try:
            for start in range(0, tasks, 100):
                k = min(100, tasks - start)
                with conn.transaction():
                    if bulk is not None:  # two statements per 100 tasks
                        bulk(
                            conn, [trace_tasks.NewTask(uuid.uuid4(), "noop", {}) for _ in range(k)]
                        )
                    else:
                        for _ in range(k):
                            create_task(conn, task_id=uuid.uuid4(), operator="noop", payload={})
                outbox.drain_all(conn, driver)
            while succeeded.value < tasks:
                outbox.drain_all(conn, driver)
                time.sleep(0.01)
        finally:
            driver.close()
            conn.close()

    return work


def _take_fn() -> Callable[..., Any] | None:
    """``tasks.take`` when the code measured has it (the engine's take since queue9)."""
    try:
        from trace_core.tasks.take import take
    except ImportError:
        return None
    return take


def lifecycle_worker(state_url: str, tasks: int, batch: int, succeeded: Any) -> Callable[[], None]:
    """A worker: receive up to ``batch`` wake-ups, claim each (one statement, durable), run
    the no-op operator, complete (one statement, asynchronous: no transaction of its own),
    ack. At batch 1, as a worker run takes its next task: ``tasks.take`` (ack the wake-ups
    finished, receive the next and claim its task in one durable statement) when the code
    measured has it, else the ack rides with the next receive when the driver offers it."""
    conn = connect(state_url, autocommit=True)
    driver = _driver(state_url)
    combined = batch == 1 and hasattr(driver, "ack_receive")
    take = _take_fn() if batch == 1 else None
    # a worker run's takes have connections of their own, with pgqueue's planner options
    take_conn = _take_conn(state_url) if take is not None else None

    def work() -> None:
        held: list[Any] = []
        try:
            while succeeded.value < tasks:
                if take is not None:
                    got = take(
                        take_conn,
                        driver,
                        TASK_WAKEUP,
                        1,
                        lease_seconds=30,
                        visibility_timeout=60,
                        done=held,
                    )
                    held = got.pending  # acked with the next take, claimed or not
                    leases = list(got.leases)
                    if not got.received:  # nothing due: wait for one as the plain worker does
                        held = driver.receive(
                            TASK_WAKEUP, 1, visibility_timeout=60, wait_seconds=WAIT
                        )
                    for m in held:  # what the take could not claim: the full claim decides
                        try:
                            leases.append(
                                claim(conn, uuid.UUID(m.payload["task_id"]), lease_seconds=30)
                            )
                        except LeaseConflict:
                            continue
                    for lease in leases:
                        # the no-op operator runs here
                        complete_success(conn, lease)
                        _count(succeeded, 1)
                    continue
                if combined:
                    _stale, got = driver.ack_receive(held, TASK_WAKEUP, 1, visibility_timeout=60)
                    if not got:  # nothing due: wait for one as the plain worker does
                        got = driver.receive(
                            TASK_WAKEUP, 1, visibility_timeout=60, wait_seconds=WAIT
                        )
                    held = got
                else:
                    got = driver.receive(
                        TASK_WAKEUP, batch, visibility_timeout=60, wait_seconds=WAIT
                    )
                for m in got:
                    try:
                        lease = claim(conn, uuid.UUID(m.payload["task_id"]), lease_seconds=30)
                    except LeaseConflict:
                        continue
                    # the no-op operator runs here
                    complete_success(conn, lease)
                    _count(succeeded, 1)
                if got and not combined:
                    driver.ack_batch(got)
            if held:
                driver.ack_batch(held)
        finally:
            driver.close()
            conn.close()
            if take_conn is not None:
                take_conn.close()

    return work


def _take_conn(state_url: str) -> Any:
    """A take's connection as ``Runtime.reused_state(queue=True)`` opens it."""
    from trace_core.queue.pgqueue import PLANNER_OPTIONS

    return connect(state_url, autocommit=True, options=PLANNER_OPTIONS, prepare_threshold=0)


def bench_lifecycle(
    state_url: str, tasks: int, workers: int, batch: int, processes: bool
) -> Result:
    """Tasks per second through the whole lifecycle with a no-op operator; each worker
    receives up to ``batch`` wake-ups at a time."""
    succeeded = mp.get_context("fork").Value("q", 0)

    def role(i: int) -> Callable[[], None]:
        if i == 0:
            return dispatcher(state_url, tasks, succeeded)
        return lifecycle_worker(state_url, tasks, batch, succeeded)

    seconds = _run(workers + 1, role, processes)
    return Result("lifecycle", batch, workers, tasks, seconds)


def bench_completion(state_url: str, tasks: int, workers: int, *, durable: bool) -> Result:
    """claim + no-op + complete_success per task on ``workers`` threads (no queue): the
    completion as this tree commits it (asynchronously), or forced durable as before."""
    with connect(state_url, autocommit=True) as conn, conn.transaction():
        ids = [uuid.uuid4() for _ in range(tasks)]
        for task_id in ids:
            create_task(conn, task_id=task_id, operator="noop", payload={})
        conn.execute("UPDATE state.outbox SET status = 'sent' WHERE status = 'pending'")
    lock = threading.Lock()

    def prepare(_: int) -> Callable[[], None]:
        def work() -> None:
            with connect(state_url, autocommit=True) as conn:
                while True:
                    with lock:
                        if not ids:
                            return
                        task_id = ids.pop()
                    lease = claim(conn, task_id, lease_seconds=30)
                    with conn.transaction():
                        complete_success(conn, lease)
                        if durable:
                            conn.execute("SET LOCAL synchronous_commit = on")

        return work

    phase = "claim+complete durable" if durable else "claim+complete"
    return Result(phase, 1, workers, tasks, _run(workers, prepare, processes=False))


def _vacuum(state_url: str) -> None:
    with psycopg.connect(state_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE state.queue_messages")


def _best(runs: list[Result]) -> list[Result]:
    """The fastest run of each scenario, in first-seen order (the box is shared and noisy)."""
    best: dict[tuple[str, int, int], Result] = {}
    for r in runs:
        key = (r.phase, r.batch, r.workers)
        if key not in best or r.rate > best[key].rate:
            best[key] = r
    return list(best.values())


def _ratio(r: Result, base: dict[tuple[str, int], float]) -> str:
    parts = []
    phase = r.phase.removeprefix("baseline ").replace("recv", "receive")
    anchor = ANCHORS.get((phase, r.batch))
    if anchor:
        parts.append(f"{r.rate / anchor:5.2f}x anchor {anchor:,}")
    target = TARGETS.get((r.phase, r.batch))
    if target:
        parts.append(f"{r.rate / target:5.2f}x target {target:,}")
    raw = base.get((r.phase, r.batch))
    if raw:
        parts.append(f"{r.rate / raw:5.2f}x raw")
    durable = base.get((f"durable {r.phase}", r.workers))
    if durable:
        parts.append(f"{r.rate / durable:5.2f}x durable")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages at batch 100")
    parser.add_argument("--messages-single", type=int, default=3_000, help="messages at batch 1")
    parser.add_argument("--tasks", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario; best is shown")
    parser.add_argument("--baseline-ref", help="git ref to run side by side (e.g. main)")
    parser.add_argument(
        "--completion-rounds",
        type=int,
        default=0,
        help="also time claim + complete_success, durable vs asynchronous, in N rounds",
    )
    parser.add_argument(
        "--workers-as",
        choices=("processes", "threads"),
        default="processes",
        help="workers (publishers, consumers, task workers, the dispatcher) as forked "
        "processes, as Trace runs them (Dagster runs), or as threads of one process (one GIL)",
    )
    parser.add_argument(
        "--baseline-harness",
        choices=("this", "ref"),
        default="this",
        help="with --baseline-ref: run REF's code under this bench script (same harness), or "
        "REF's own bench script",
    )
    args = parser.parse_args()
    processes = args.workers_as == "processes"

    home = Path(tempfile.mkdtemp(prefix="trace-bench-queue-"))
    # atexit runs last-in first-out: the server (registered next) stops before this removal
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    if args.baseline_ref:
        compare(args.baseline_ref, args, home, Path(__file__).resolve(), TARGETS)
        return
    dbs = scratch_databases(home, "bench_queue")

    load_before = os.getloadavg()[0]
    runs: list[Result] = []
    for _ in range(args.repeat):
        runs += baseline(dbs.state_url, args.messages_single, args.messages)
        for batch, n in ((1, args.messages_single), (100, args.messages)):
            for workers in (1, 4):
                runs += bench_queue(dbs.state_url, n, batch, workers, processes)
        for batch in (1, 10):
            for workers in (1, 4):
                runs.append(bench_lifecycle(dbs.state_url, args.tasks, workers, batch, processes))
    # the completion's commit alone, both ways interleaved in small rounds; summed per way
    done: dict[tuple[bool, int], list[Result]] = {}
    for _ in range(args.completion_rounds):
        for workers in (1, 4):
            for durable in (True, False):
                r = bench_completion(dbs.state_url, 200, workers, durable=durable)
                done.setdefault((durable, workers), []).append(r)
    results = _best(runs)
    for rs in done.values():
        total = sum(r.messages for r in rs), sum(r.seconds for r in rs)
        results.append(Result(rs[0].phase, 1, rs[0].workers, *total))
    base = {
        (r.phase.split()[1].replace("recv", "receive"), r.batch): r.rate
        for r in results
        if r.phase.startswith("baseline")
    }
    base.update(
        {
            (f"durable {r.phase.removesuffix(' durable')}", r.workers): r.rate
            for r in results
            if r.phase.endswith(" durable")
        }
    )

    print(
        f"best of {args.repeat}, workers as {args.workers_as}; load average {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after (2 cores, shared)"
    )
    print(f"{'phase':<23}{'batch':>6}{'workers':>8}{'msgs':>8}{'seconds':>9}{'per s':>10}  ratio")
    for r in results:
        print(
            f"{r.phase:<23}{r.batch:>6}{r.workers:>8}{r.messages:>8}{r.seconds:>9.2f}"
            f"{r.rate:>10,.0f}  {_ratio(r, base)}"
        )


if __name__ == "__main__":
    main()
