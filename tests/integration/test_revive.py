"""Reviving dead tasks and chain_sync ranges on real Postgres: fresh budget, outbox, CLI.

The lifecycle part drives the ``fail``-style failures by hand (claim + complete_failure); the
CLI part runs ``trace-lite retry`` / ``status`` in process against the test's databases.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from tests.integration.test_planner import ORG, apply, complete, fixed_job
from trace_core import outbox
from trace_core.chain_sync import planner, range_outcomes, status
from trace_core.chain_sync import revive as chain_retry
from trace_core.chain_sync.revive import SOURCE_CLI, prepare_rerun, revive_tasks
from trace_core.chain_sync.store import set_enabled
from trace_core.cli.main import cli
from trace_core.db.connection import Databases, connect
from trace_core.errors import ChainSyncJobNotFound, UnknownRange, UnknownStream, UnknownTask
from trace_core.queue.base import TASK_WAKEUP
from trace_core.queue.pgqueue import PgQueue
from trace_core.runtime import Runtime
from trace_core.tasks import RetryPolicy, claim, complete_failure, create_task, reap

NO_BACKOFF = RetryPolicy(base_seconds=0)
# Everything a revive may touch; "nothing changed" compares these before and after.
SNAPSHOT = {
    "tasks": "SELECT task_id, status, attempt, attempt_base, paused, wakeups, next_run_at, "
    "updated_at FROM state.tasks ORDER BY task_id",
    "ranges": "SELECT task_id, status, updated_at FROM state.chain_sync_scheduled_ranges "
    "ORDER BY task_id",
    "outbox": "SELECT outbox_id, status FROM state.outbox ORDER BY outbox_id",
    "revivals": "SELECT task_id, revive FROM state.task_revivals ORDER BY 1, 2",
}


@pytest.fixture
def conn(dbs: Databases) -> Iterator[psycopg.Connection[Any]]:
    with connect(dbs.state_url, autocommit=True) as c:
        yield c


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    return {name: conn.execute(sql).fetchall() for name, sql in SNAPSHOT.items()}


def fail_attempt(
    conn: psycopg.Connection[Any],
    task_id: uuid.UUID,
    *,
    error: str = "boom",
    fatal: bool = False,
    policy: RetryPolicy = NO_BACKOFF,
) -> tuple[int, str]:
    """Claim and fail one attempt the way the worker does (dead hook included)."""
    with conn.transaction():
        lease = claim(conn, task_id, lease_seconds=30)
    with conn.transaction():
        decision = complete_failure(conn, lease, error=error, fatal=fatal, policy=policy)
        if decision == "dead":
            range_outcomes.on_task_dead(conn, lease)
    return lease.attempt, decision


def dead_task(conn: psycopg.Connection[Any], *, max_attempts: int = 2) -> uuid.UUID:
    task_id = uuid.uuid4()
    with conn.transaction():
        create_task(conn, task_id=task_id, operator="fail", payload={}, max_attempts=max_attempts)
    for _ in range(max_attempts):
        fail_attempt(conn, task_id, error="rpc down")
    return task_id


def wakeups(conn: psycopg.Connection[Any], task_id: uuid.UUID) -> list[tuple[int, str]]:
    rows = conn.execute(
        "SELECT (payload->>'wakeup')::int, status FROM state.outbox "
        "WHERE topic = %s AND payload->>'task_id' = %s ORDER BY 1",
        (TASK_WAKEUP, str(task_id)),
    ).fetchall()
    return [(int(g), s) for g, s in rows]


def task_row(conn: psycopg.Connection[Any], task_id: uuid.UUID) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT status, attempt, attempt_base, revives FROM state.tasks WHERE task_id = %s",
        (task_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_revive_gives_a_fresh_budget_and_a_wakeup_through_the_outbox(
    conn: psycopg.Connection[Any], dbs: Databases
) -> None:
    task_id = dead_task(conn, max_attempts=2)
    assert task_row(conn, task_id) == ("dead", 2, 0, 0)
    assert wakeups(conn, task_id) == [(1, "pending"), (2, "pending")]

    with conn.transaction():
        (o,) = revive_tasks(conn, [task_id], source=SOURCE_CLI, detail="test")
    assert (o.revived, o.status, o.attempts, o.last_error) == (True, "dead", 2, "rpc down")
    assert task_row(conn, task_id) == ("queued", 2, 2, 1)
    # the wake-up is an outbox row (generation 3), published only by the outbox publisher
    assert wakeups(conn, task_id) == [(1, "pending"), (2, "pending"), (3, "pending")]
    queue = PgQueue(dbs.state_url, max_receive_count=50)
    try:
        assert outbox.drain_all(conn, queue) == 3
        received = queue.receive(TASK_WAKEUP, 10, visibility_timeout=30)
        assert {(m.payload["task_id"], m.payload["wakeup"]) for m in received} >= {
            (str(task_id), 3)
        }
    finally:
        queue.close()

    # fresh budget: two more attempts (3 and 4); the first of them is retried, not dead,
    # and its backoff restarts at the base delay (attempt 1 of the new budget)
    policy = RetryPolicy(base_seconds=0.01, max_seconds=10)
    assert fail_attempt(conn, task_id, policy=policy) == (3, "retry")
    row = conn.execute(
        "SELECT next_run_at - updated_at FROM state.tasks WHERE task_id = %s", (task_id,)
    ).fetchone()
    assert row is not None and row[0].total_seconds() == pytest.approx(0.01, abs=0.005)
    conn.execute("UPDATE state.tasks SET next_run_at = now() WHERE task_id = %s", (task_id,))
    assert fail_attempt(conn, task_id) == (4, "dead")
    history = conn.execute(
        "SELECT attempt, outcome FROM state.task_attempts WHERE task_id = %s ORDER BY attempt",
        (task_id,),
    ).fetchall()
    assert history == [(1, "retryable"), (2, "retryable"), (3, "retryable"), (4, "retryable")]
    revivals = conn.execute(
        "SELECT revive, attempt, source, detail FROM state.task_revivals WHERE task_id = %s",
        (task_id,),
    ).fetchall()
    assert revivals == [(1, 2, "cli", "test")]


def test_reaper_counts_expired_leases_against_the_fresh_budget(
    conn: psycopg.Connection[Any],
) -> None:
    task_id = dead_task(conn, max_attempts=1)
    with conn.transaction():
        revive_tasks(conn, [task_id], source=SOURCE_CLI)
    with conn.transaction():
        lease = claim(conn, task_id, lease_seconds=0.01)
    assert lease.attempt == 2 and lease.budget_attempt == 1
    conn.execute(
        "UPDATE state.tasks SET lease_expires_at = now() - interval '1 second' WHERE task_id = %s",
        (task_id,),
    )
    with conn.transaction():
        result = reap(conn, policy=NO_BACKOFF, rewake_after_seconds=3600)
    assert (result.retried, result.dead) == (0, 1)  # budget of 1: the expired attempt was it
    assert task_row(conn, task_id)[:3] == ("dead", 2, 1)


def test_revive_of_unknown_or_live_tasks_changes_nothing(conn: psycopg.Connection[Any]) -> None:
    dead = dead_task(conn)
    live = uuid.uuid4()
    with conn.transaction():
        create_task(conn, task_id=live, operator="noop", payload={}, max_attempts=3)
    before = snapshot(conn)
    unknown = uuid.uuid4()
    with pytest.raises(UnknownTask, match=str(unknown)), conn.transaction():
        revive_tasks(conn, [dead, unknown], source=SOURCE_CLI)
    assert snapshot(conn) == before  # the known dead task was not revived either

    with conn.transaction():
        (o,) = revive_tasks(conn, [live], source=SOURCE_CLI)
    assert not o.revived and o.status == "queued"
    assert snapshot(conn) == before


def test_dead_range_is_rescheduled_and_its_stream_plans_again(
    conn: psycopg.Connection[Any],
) -> None:
    job_id = apply(conn, fixed_job(to_block=4000, inflight=2)).job_id
    first = planner.plan_tick(conn, org_id=ORG).planned
    fail_attempt(conn, first[0].task_id, error="cryo exploded", fatal=True)
    complete(conn, first[1].task_id)
    assert planner.plan_tick(conn, org_id=ORG).streams[0].blocked_kind == planner.DEAD_RANGES

    (js,) = status.job_status(conn, ORG, "job")
    (dead,) = js["streams"][0]["dead_ranges"]
    assert (dead["range_start"], dead["range_end"], dead["task_id"]) == (
        0,
        1000,
        str(first[0].task_id),
    )
    assert dead["last_error"] == "cryo exploded" and dead["attempts"] == 1
    assert "cryo exploded" in js["streams"][0]["blocked_reason"]

    report = chain_retry.retry(conn, ORG, job="job", stream="blocks")
    assert [o.task_id for o in report.revived] == [first[0].task_id]
    ranges = conn.execute(
        "SELECT range_start, status FROM state.chain_sync_scheduled_ranges "
        "WHERE job_id = %s ORDER BY range_start",
        (job_id,),
    ).fetchall()
    assert ranges == [(0, "scheduled"), (1000, "completed")]
    (js,) = status.job_status(conn, ORG, "job")
    assert js["streams"][0]["dead_ranges"] == [] and js["streams"][0]["dead"] == 0
    assert len(planner.plan_tick(conn, org_id=ORG).planned) == 1  # planning resumed


def test_revived_range_of_a_paused_job_waits_for_resume(conn: psycopg.Connection[Any]) -> None:
    apply(conn, fixed_job(to_block=2000, inflight=1))
    (p,) = planner.plan_tick(conn, org_id=ORG).planned
    fail_attempt(conn, p.task_id, fatal=True)
    set_enabled(conn, ORG, "job", False)
    before = len(wakeups(conn, p.task_id))
    (o,) = chain_retry.retry(conn, ORG, job="job").revived
    assert o.paused and len(wakeups(conn, p.task_id)) == before  # no wake-up while paused
    set_enabled(conn, ORG, "job", True)
    assert len(wakeups(conn, p.task_id)) == before + 1  # resume wakes it


def test_selection_errors_name_what_is_unknown(conn: psycopg.Connection[Any]) -> None:
    apply(conn, fixed_job(to_block=2000, inflight=2, streams=("blocks", "logs")))
    planned = planner.plan_tick(conn, org_id=ORG).planned
    fail_attempt(conn, planned[0].task_id, fatal=True)
    before = snapshot(conn)
    with pytest.raises(ChainSyncJobNotFound, match="nope"):
        chain_retry.retry(conn, ORG, job="nope")
    with pytest.raises(UnknownStream, match="'txs'.*blocks, logs"):
        chain_retry.retry(conn, ORG, job="job", stream="txs")
    with pytest.raises(UnknownRange, match=r"\[0, 999\)"):
        chain_retry.retry(conn, ORG, job="job", stream="blocks", block_range=(0, 999))
    assert snapshot(conn) == before
    # a range given without a stream revives it in every stream that has it dead
    report = chain_retry.retry(conn, ORG, job="job", block_range=(0, 1000))
    assert len(report.revived) == 1 and len(report.not_dead) == 1


def test_prepare_rerun_revives_dead_and_expedites_backed_off_tasks(
    conn: psycopg.Connection[Any],
) -> None:
    dead = dead_task(conn)
    backed_off = uuid.uuid4()
    with conn.transaction():
        create_task(conn, task_id=backed_off, operator="fail", payload={}, max_attempts=3)
    fail_attempt(conn, backed_off, policy=RetryPolicy(base_seconds=3600))
    with conn.transaction():
        prep = prepare_rerun(
            conn,
            [dead, backed_off, uuid.uuid4()],
            source="dagster_reexecution",
            detail="run x",
            wake_delay_seconds=30,
        )
    assert [o.task_id for o in prep.revived] == [dead] and prep.expedited == [backed_off]
    due = conn.execute(
        "SELECT task_id FROM state.tasks WHERE next_run_at <= now() AND status = 'queued'"
    ).fetchall()
    assert {r[0] for r in due} == {dead, backed_off}
    # the revived task's wake-up is a backstop, available one lease from now
    (delay,) = conn.execute(
        "SELECT available_at - now() FROM state.outbox WHERE payload->>'task_id' = %s "
        "AND (payload->>'wakeup')::int = 3",
        (str(dead),),
    ).fetchone() or (None,)
    assert delay is not None and 25 < delay.total_seconds() <= 30


# --- the CLI ----------------------------------------------------------------------------


def trace_lite(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_cli_retry_revives_and_prints_what_it_did(trace_env: Runtime) -> None:
    with trace_env.state() as c:
        apply(c, fixed_job(to_block=3000, inflight=3, streams=("blocks", "logs")))
        planned = planner.plan_tick(c, org_id=ORG).planned
        by = {(p.dataset_key, p.range_start): p.task_id for p in planned}
        fail_attempt(c, by[("blocks", 0)], error="no such block", fatal=True)
        fail_attempt(c, by[("blocks", 1000)], error="no such block", fatal=True)
        fail_attempt(c, by[("logs", 0)], error="logs bloom mismatch", fatal=True)
        before = snapshot(c)

    code, out = trace_lite("status", "--job", "job")
    assert code == 0 and "dead ranges of blocks" in out and "no such block" in out
    assert "logs bloom mismatch" in out and "trace-lite retry --job job --stream logs" in out
    code, out = trace_lite("status", "--job", "job", "--json")
    streams = {s["dataset_key"]: s for s in json.loads(out)["jobs"][0]["streams"]}
    assert [d["range_start"] for d in streams["blocks"]["dead_ranges"]] == [0, 1000]
    assert "no such block" in streams["blocks"]["dead_ranges"][0]["last_error"]

    # unknown things: exit 1, named, nothing changed
    unknown = uuid.uuid4()
    cases = [
        (("--task", str(unknown)), str(unknown)),
        (("--task", str(by[("logs", 0)]), "--task", str(unknown)), str(unknown)),
        (("--task", "not-an-id"), "not-an-id"),
        (("--job", "nope"), "nope"),
        (("--job", "job", "--stream", "txs"), "txs"),
        (("--job", "job", "--stream", "blocks", "--range", "5-10"), "[5, 10)"),
    ]
    for args, named in cases:
        code, out = trace_lite("retry", *args)
        assert code == 1 and named in out, (args, out)
    for args in (("--stream", "blocks"), ("--job", "job", "--range", "ten-20"), ()):
        code, out = trace_lite("retry", *args)
        assert code == 2, (args, out)  # usage / malformed input
    with trace_env.state() as c:
        assert snapshot(c) == before

    code, out = trace_lite("retry", "--job", "job", "--stream", "blocks", "--range", "0-1000")
    assert code == 0 and f"revived task {by[('blocks', 0)]}" in out
    assert "job/blocks [0, 1000)" in out and "no such block" in out and "1 revived" in out
    code, out = trace_lite("retry", "--task", str(by[("blocks", 0)]))
    assert code == 0 and "is queued: not dead, nothing to revive" in out
    code, out = trace_lite("retry", "--job", "job", "--json")
    report = json.loads(out)
    assert code == 0 and {r["task_id"] for r in report["revived"]} == {
        str(by[("blocks", 1000)]),
        str(by[("logs", 0)]),
    }
    code, out = trace_lite("retry", "--job", "job")
    assert code == 0 and "no dead ranges in job job" in out
    with trace_env.state() as c:
        (js,) = status.job_status(c, ORG, "job")
        assert all(s["dead"] == 0 and s["dead_ranges"] == [] for s in js["streams"])
        for task_id in (by[("blocks", 0)], by[("blocks", 1000)], by[("logs", 0)]):
            assert task_row(c, task_id) == ("queued", 1, 1, 1)
            assert wakeups(c, task_id)[-1] == (2, "pending")
