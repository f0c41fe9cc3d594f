"""A worker run's batch: claimed at once, executed by a bounded pool, each task fenced on its
own; tasks of a run that never claims them are re-woken at once (trace_core.tasks.retry)."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from trace_core.engine.execute import TaskOutcome, execute_batch
from trace_core.engine.intake import (
    GONE,
    WAITING,
    LaunchState,
    receive_wakeups,
    record_runs,
    recover_stranded,
)
from trace_core.operators.base import Completion, OperatorContext, OperatorRegistry
from trace_core.queue.base import TASK_WAKEUP
from trace_core.runtime import Runtime
from trace_core.tasks import create_task


def _create(rt: Runtime, n: int, operator: str = "probe") -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    with rt.state() as conn, conn.transaction():
        for tid in ids:
            create_task(conn, task_id=tid, operator=operator, payload={}, max_attempts=2)
    return ids


def _continuing(rt: Runtime, *, threads: int) -> Runtime:
    """A runtime (closed by the caller) whose worker runs continue for up to 60 s, ``threads``
    tasks at once and as many held."""
    update = {"worker_concurrency": threads, "worker_batch_size": threads}
    settings = rt.settings.model_copy(update={**update, "worker_continue_seconds": 60.0})
    return Runtime(settings, rt.dbs)


def _statuses(rt: Runtime, ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[str, int]]:
    with rt.state() as conn:
        rows = conn.execute(
            "SELECT task_id, status, attempt FROM state.tasks WHERE task_id = ANY(%s)", (ids,)
        ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


@pytest.mark.parametrize("concurrency", [2, 3])
def test_pool_runs_exactly_concurrency_tasks_at_once(trace_env: Runtime, concurrency: int) -> None:
    """Each wave of ``concurrency`` tasks meets at a barrier: it breaks (and its tasks fail) if
    fewer run at once; the high-water mark shows that no more ever do."""
    barrier = threading.Barrier(concurrency, timeout=30)
    lock = threading.Lock()
    active = [0, 0]  # now, most

    def probe(ctx: OperatorContext) -> Completion:
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        try:
            barrier.wait()
        finally:
            with lock:
                active[0] -= 1
        return Completion(outputs={"ok": True})

    registry = OperatorRegistry()
    registry.register("probe", probe)
    ids = _create(trace_env, concurrency * 2)
    outcomes = list(execute_batch(trace_env, ids, concurrency=concurrency, registry=registry))
    assert sorted(o.status for o in outcomes) == ["succeeded"] * len(ids)
    assert active[1] == concurrency
    assert set(_statuses(trace_env, ids).values()) == {("succeeded", 1)}


def test_whole_batch_is_claimed_before_the_first_task_runs(trace_env: Runtime) -> None:
    seen: list[dict[uuid.UUID, tuple[str, int]]] = []
    ids: list[uuid.UUID] = []

    def probe(ctx: OperatorContext) -> Completion:
        seen.append(_statuses(ctx.runtime, ids))
        return Completion()

    registry = OperatorRegistry()
    registry.register("probe", probe)
    ids.extend(_create(trace_env, 5))
    outcomes = list(execute_batch(trace_env, ids, concurrency=1, registry=registry))
    assert [o.status for o in outcomes] == ["succeeded"] * 5
    # the first task to run saw all five leased (attempt 1), though four had not started
    assert set(seen[0].values()) == {("running", 1)}


def test_one_failing_task_does_not_stop_the_others(trace_env: Runtime) -> None:
    good = _create(trace_env, 3, "noop")
    bad = _create(trace_env, 1, "fail")
    outcomes = {o.task_id: o.status for o in execute_batch(trace_env, good + bad, concurrency=2)}
    assert outcomes == {**dict.fromkeys(good, "succeeded"), bad[0]: "retry"}


def test_a_task_already_claimed_elsewhere_is_skipped(trace_env: Runtime) -> None:
    ids = _create(trace_env, 2, "noop")
    registry = OperatorRegistry()
    registry.register("noop", lambda ctx: Completion())
    first = list(execute_batch(trace_env, ids[:1], concurrency=1, registry=registry))
    assert first[0].status == "succeeded"
    again = {o.task_id: o.status for o in execute_batch(trace_env, ids, concurrency=2)}
    assert again == {ids[0]: "skipped", ids[1]: "succeeded"}


def _strand(rt: Runtime, n: int, run_key: str) -> list[uuid.UUID]:
    """Tasks whose wake-ups were received and acked into a requested run that never ran."""
    from trace_core import outbox

    ids = _create(rt, n, "noop")
    with rt.state() as conn:
        outbox.drain_all(conn, rt.queue)
    wakeups = receive_wakeups(rt, 100)
    assert {w.task_id for w in wakeups} == set(ids)
    record_runs(rt, [(run_key, ids)])
    rt.queue.ack_batch([w.message for w in wakeups])
    return ids


def test_tasks_of_a_run_that_never_started_are_rewoken_at_once(trace_env: Runtime) -> None:
    ids = _strand(trace_env, 3, "lost-run")
    assert trace_env.queue.stats(TASK_WAKEUP).depth == 0
    # the run is alive (queued behind others): nothing to do
    assert recover_stranded(trace_env, lambda key: WAITING, grace_seconds=0) == 0
    assert trace_env.queue.stats(TASK_WAKEUP).depth == 0
    # the run is gone: every waiting task gets a new wake-up, published now
    gone = {"lost-run": GONE}
    assert recover_stranded(trace_env, lambda key: gone.get(key, WAITING), grace_seconds=0) == 3
    woken = receive_wakeups(trace_env, 100)
    assert sorted(w.task_id for w in woken) == sorted(ids)
    assert {w.generation for w in woken} == {2}
    # settled: asking again re-wakes nothing
    assert recover_stranded(trace_env, lambda key: GONE, grace_seconds=0) == 0


def test_claimed_tasks_and_young_runs_are_left_alone(trace_env: Runtime) -> None:
    ids = _strand(trace_env, 2, "partly-claimed")
    outcomes = list(execute_batch(trace_env, ids[:1], concurrency=1))
    assert outcomes[0].status == "succeeded"
    # the young run is not judged yet
    assert recover_stranded(trace_env, lambda key: GONE, grace_seconds=3600) == 0
    # only the task nobody claimed is re-woken
    assert recover_stranded(trace_env, lambda key: GONE, grace_seconds=0) == 1
    (woken,) = receive_wakeups(trace_env, 100)
    assert woken.task_id == ids[1]


def test_a_launched_run_that_has_not_claimed_within_one_lease_is_stranded(
    trace_env: Runtime,
) -> None:
    """Dagster may show a run whose process died while starting as starting or started
    forever: one lease after its launch (database-free clock, injected) its batch is re-woken."""
    lease = trace_env.settings.lease_seconds
    ids = _strand(trace_env, 2, "died-starting")
    launched_at = 1_000_000.0

    def recover(now: float) -> int:
        return recover_stranded(
            trace_env,
            lambda key: LaunchState(launched_at=launched_at),
            grace_seconds=0,
            now=lambda: now,
        )

    assert recover(launched_at + lease - 0.5) == 0  # still starting: left alone
    assert trace_env.queue.stats(TASK_WAKEUP).depth == 0
    assert recover(launched_at + lease) == 2
    assert sorted(w.task_id for w in receive_wakeups(trace_env, 100)) == sorted(ids)
    assert recover(launched_at + 10 * lease) == 0  # settled


def test_a_stranded_task_in_backoff_is_rewoken_when_due(trace_env: Runtime) -> None:
    """A run that never claimed a task waiting out a retry backoff would only skip it if woken
    now: its re-wake waits in the outbox until the task is due."""
    (tid,) = _strand(trace_env, 1, "backoff-run")
    with trace_env.state() as conn:  # as a failed attempt's requeue leaves it, minus the wake-up
        conn.execute(
            "UPDATE state.tasks SET next_run_at = now() + interval '1 hour' WHERE task_id = %s",
            (tid,),
        )
        conn.execute(
            "UPDATE state.worker_runs SET requested_at = now() WHERE run_key = %s", ("backoff-run",)
        )
    assert recover_stranded(trace_env, lambda key: GONE, grace_seconds=0) == 1
    assert receive_wakeups(trace_env, 10) == []
    with trace_env.state() as conn:
        row = conn.execute(
            "SELECT o.available_at = t.next_run_at FROM state.outbox o, state.tasks t"
            " WHERE t.task_id = %s AND o.status = 'pending' AND o.payload->>'task_id' = %s",
            (tid, str(tid)),
        ).fetchone()
    assert row == (True,)


def test_received_wakeups_are_hidden_for_one_lease_at_most(
    trace_env: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver that dies before it records or claims its wake-ups loses them for one lease
    (here 1 s), not the queue's visibility timeout (60 s): they are delivered again."""
    from trace_core import outbox
    from trace_core.settings import load_settings

    monkeypatch.setenv("TRACE_LEASE_SECONDS", "1")
    rt = Runtime(load_settings())
    assert rt.settings.visibility_timeout_seconds == 60
    (tid,) = _create(rt, 1, "noop")
    with rt.state() as conn:
        outbox.drain_all(conn, rt.queue)
    (first,) = receive_wakeups(rt, 10)  # and the receiver dies: never acked
    assert first.task_id == tid
    deadline = time.monotonic() + 1 + 5  # one lease, and a loaded box
    while not (again := receive_wakeups(rt, 10)):
        assert time.monotonic() < deadline, "the wake-up stayed hidden longer than a lease"
        time.sleep(0.05)
    assert [w.task_id for w in again] == [tid]
    assert again[0].message.message_id == first.message.message_id


def test_only_operators_that_query_get_a_capability_token(trace_env: Runtime) -> None:
    """A token is issued to an operator registered with ``queries=True`` (pinned to its
    grants, so a malformed ``grants`` fails it); any other operator gets none and never reads
    its payload's grants."""
    seen: dict[str, str] = {}

    def record(name: str):  # noqa: ANN202 - a small factory
        def op(ctx: OperatorContext) -> Completion:
            seen[name] = ctx.capability_token
            return Completion()

        return op

    registry = OperatorRegistry()
    registry.register("plain", record("plain"))
    registry.register("reader", record("reader"), queries=True)
    assert registry.queries("reader") and not registry.queries("plain")
    ids = {}
    with trace_env.state() as conn, conn.transaction():
        for name, payload in (
            ("plain", {"grants": "not a list"}),
            ("reader", {"grants": []}),
            ("reader", {"grants": "not a list"}),
        ):
            tid = uuid.uuid4()
            create_task(conn, task_id=tid, operator=name, payload=payload, max_attempts=1)
            ids[tid] = name
    outcomes = {
        o.task_id: o.status
        for o in execute_batch(trace_env, list(ids), concurrency=1, registry=registry)
    }
    assert sorted(outcomes.values()) == ["dead", "succeeded", "succeeded"]
    assert seen["plain"] == "" and seen["reader"].count(".") == 2  # a JWT


def test_production_registers_only_the_operators_it_schedules() -> None:
    """cryo_ingest (the planner), alert_evaluate (alert routing) and udf_transform (transform
    jobs); the hot services run as services, and the tests' noop/fail come from
    tests/operators.py."""
    from trace_core.engine.registry import register_builtin

    registry = OperatorRegistry()
    register_builtin(registry)
    assert registry.names() == ["alert_evaluate", "cryo_ingest", "udf_transform"]
    assert [n for n in registry.names() if registry.queries(n)] == [
        "alert_evaluate",
        "udf_transform",
    ]


def test_a_run_keeps_its_threads_busy_past_a_slow_task(trace_env: Runtime) -> None:
    """A pipeline, not waves: while the first task of the batch is still running, the other
    thread takes the woken tasks one by one. The slow task waits (up to 30 s, then fails) for
    the other five to finish, which waves of two would never let happen."""
    from trace_core.engine.worker_run import run_worker

    rest_done = threading.Event()
    succeeded: list[uuid.UUID] = []

    def probe(ctx: OperatorContext) -> Completion:
        if ctx.lease.task_id == ids[0] and not rest_done.wait(30):
            raise RuntimeError("the others never ran while this task was running")
        return Completion()

    def on_outcome(outcome: TaskOutcome) -> None:
        if outcome.status == "succeeded":
            succeeded.append(outcome.task_id)
        if set(ids[1:]) <= set(succeeded):
            rest_done.set()

    registry = OperatorRegistry()
    registry.register("probe", probe)
    rt = _continuing(trace_env, threads=2)
    try:
        ids = _create(rt, 6)
        report = run_worker(
            rt, ids[:2], on_outcome=on_outcome, on_planned=lambda _: None, registry=registry
        )
    finally:
        rt.close()
    assert sorted(succeeded) == sorted(ids) and succeeded[-1] == ids[0]
    assert not report.failures
    # one take per idle thread: more takes than the two a wave-by-wave run would make
    assert report.batches >= 3
    assert set(_statuses(trace_env, ids).values()) == {("succeeded", 1)}


def test_a_run_reuses_its_state_connections_only_when_idle(trace_env: Runtime) -> None:
    """``Runtime.reused_state``: a connection handed back idle serves the next block (no new
    backend per claim or commit); one handed back inside a transaction or after an error is
    closed, never reused half-done; ``close`` closes the kept ones."""
    with trace_env.reused_state() as state:
        with state() as conn:
            first = conn
        with state() as conn, conn.transaction():
            assert conn is first and not conn.closed
        with state() as conn:
            conn.execute("BEGIN")  # left open: must not be handed out again
        assert first.closed
        with pytest.raises(ZeroDivisionError), state() as conn:
            assert conn is not first
            second = conn
            raise ZeroDivisionError
        assert second.closed
        with state() as conn:
            assert conn is not second
            kept = conn
        assert not kept.closed
    assert kept.closed


def test_a_reusing_runtime_hands_out_the_runs_connections_for_its_own_org_only(
    trace_env: Runtime,
) -> None:
    """``Runtime.reusing``: ``state()`` of the view serves from the run's kept connections (a
    worker run's reporting: no new backend per range), the runtime itself still opens a new
    one per block, and another org's runtime of the view opens its own (its org stamp)."""
    with trace_env.reused_state() as reused:
        view = trace_env.reusing(reused)
        assert view.for_org(None) is view and view.settings is trace_env.settings
        with view.state() as conn:
            first = conn.info.backend_pid
        with view.state() as conn:
            assert conn.info.backend_pid == first
        with trace_env.state() as conn:
            assert conn.info.backend_pid != first
        other = view.for_org(uuid.uuid4())
        with other.state() as conn:
            assert conn.info.backend_pid != first
    with view.state() as conn:  # the run ended: its connections are closed, a new one opens
        assert conn.info.backend_pid != first


def test_a_worker_run_runs_the_range_furthest_behind_first(trace_env: Runtime) -> None:
    """One thread, a batch claimed in the order blocks 2000, 2250, 0, 250 (a stream that ran
    ahead, then one that lags): the lagging ranges run first, so the streams finish together."""
    from trace_core.engine.worker_run import run_worker

    rt = Runtime(trace_env.settings.model_copy(update={"worker_concurrency": 1}))
    starts = [2000, 2250, 0, 250]
    ids = [uuid.uuid4() for _ in starts]
    with rt.state() as conn, conn.transaction():
        for tid, start in zip(ids, starts, strict=True):
            payload = {"job_id": "j", "range_start": start}
            create_task(conn, task_id=tid, operator="probe", payload=payload, max_attempts=1)
    ran: list[int] = []
    registry = OperatorRegistry()
    registry.register(
        "probe", lambda ctx: ran.append(ctx.lease.payload["range_start"]) or Completion()
    )
    outcomes: list[TaskOutcome] = []
    run_worker(rt, ids, on_outcome=outcomes.append, on_planned=lambda _: None, registry=registry)
    assert ran == [0, 250, 2000, 2250]
    assert [o.status for o in outcomes] == ["succeeded"] * 4


def test_worker_runs_on_one_host_split_its_budget(trace_env: Runtime) -> None:
    """Two worker runs side by side on a host run ``TRACE_WORKER_CONCURRENCY`` tasks between
    them, not each; the share is counted through Postgres, so it also holds across
    processes. A run alone runs them all; one whose connection dies stops counting; another
    host's runs never count."""
    from trace_core.engine.host_share import HostShare

    with HostShare.join(trace_env) as first:
        assert first.share() == trace_env.settings.worker_concurrency == 4
        with HostShare.join(trace_env) as second, HostShare.join(trace_env, "elsewhere"):
            assert (first.runs(), first.share(), second.share()) == (2, 2, 2)
            # a run killed outright: its backend goes (as the server's owner)
            with psycopg.connect(trace_env.dbs.state_url, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s",
                    (second._conn.info.backend_pid,),
                )
            assert first.share() == 4
        settings = trace_env.settings.model_copy(update={"worker_host_concurrency": 6})
        with HostShare.join(Runtime(settings, trace_env.dbs)) as third:
            assert third.share() == 3  # 6 over two runs; alone, at most the run's own 4


def test_a_run_beside_another_on_its_host_runs_its_share(trace_env: Runtime) -> None:
    """A run that starts beside another runs two of its four threads' tasks at once (the
    high-water mark never passes two) and takes the whole budget back at its next take once
    the other has gone."""
    from trace_core.engine.host_share import HostShare
    from trace_core.engine.worker_run import run_worker

    barrier = threading.Barrier(2, timeout=30)
    lock = threading.Lock()
    active = [0, 0]  # now, most while the other run is there
    other = HostShare.join(trace_env)

    def probe(ctx: OperatorContext) -> Completion:
        with lock:
            active[0] += 1
            if not other._conn.closed:
                active[1] = max(active[1], active[0])
        try:
            barrier.wait()
        finally:
            with lock:
                active[0] -= 1
        return Completion()

    registry = OperatorRegistry()
    registry.register("probe", probe)
    rt = _continuing(trace_env, threads=4)
    try:
        ids = _create(rt, 8)
        report = run_worker(
            rt,
            ids[:2],
            on_outcome=lambda _: other.close(),
            on_planned=lambda _: None,
            registry=registry,
        )
    finally:
        other.close()
        rt.close()
    assert not report.failures
    assert active[1] == 2
    assert report.shares[0] == 2 and report.shares[-1] == 4
    assert set(_statuses(trace_env, ids).values()) == {("succeeded", 1)}


def test_a_runs_take_claims_the_woken_tasks_with_their_wakeups(trace_env: Runtime) -> None:
    """A continuing run's take (``tasks.take``) claims the queued tasks it receives and acks
    their wake-ups in the same commit; a task the run already ran (``skip``) is only received,
    for the run to hand back (``MoreWork.leave``)."""
    from trace_core.engine.worker_run import take_more_work

    ids = _create(trace_env, 3)
    more = take_more_work(trace_env, 2)
    claimed = {lease.task_id for lease in more.leases}
    assert len(claimed) == 2 and more.task_ids == [] and more.received == 2
    assert {_statuses(trace_env, ids)[t] for t in claimed} == {("running", 1)}
    stats = trace_env.queue.stats(TASK_WAKEUP)
    assert (stats.depth, stats.in_flight) == (1, 0)  # the taken wake-ups are gone
    (rest,) = set(ids) - claimed
    more = take_more_work(trace_env, 5, skip={rest})
    assert more.leases == [] and more.task_ids == [rest]
    assert _statuses(trace_env, [rest])[rest] == ("queued", 0)
    more.leave(trace_env, {rest}, set())  # handed back: due again at once
    assert trace_env.queue.stats(TASK_WAKEUP).depth == 1
