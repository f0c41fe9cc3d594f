"""Alert definitions, downstream wake-ups and alert_evaluate on real Postgres, a real Query
Service (uvicorn on loopback) over real Parquet versions, and the real sink.

Covers: apply is idempotent and checks the job and streams; a committed version's event
routes to exactly one evaluation per alert however often it is delivered; other events are
acked and ignored; multi-stream alerts wait for coverage; schedules fire once per slot; the
evaluation reads only its pinned version, publishes one fenced batch, and a stale attempt's
batch is never published; the Query Service being down is retryable, a bad template fatal.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from click.testing import CliRunner
from psycopg.rows import dict_row

from tests.integration.test_query_service import publish, serving
from trace_core import outbox
from trace_core.alerts import routing
from trace_core.alerts.evaluate import OPERATOR, alert_evaluate_operator, task_query
from trace_core.alerts.spec import parse_alert
from trace_core.alerts.store import alert_id, apply_alert, get_alert, list_alerts
from trace_core.chain_sync import store as chain_sync_store
from trace_core.chain_sync.yamlload import parse_job
from trace_core.cli.main import cli
from trace_core.datasets import events
from trace_core.datasets.events import DATASET_EVENTS
from trace_core.datasets.registry import VersionRecord
from trace_core.db.connection import Databases
from trace_core.engine.execute import capability_token_for, execute_task
from trace_core.errors import ConfigError, InvalidJobFile, QueryError, StaleAttempt
from trace_core.operators.base import OperatorContext
from trace_core.query.app import create_app
from trace_core.queue.base import BUFFER_QUEUE
from trace_core.runtime import Runtime
from trace_core.settings import Settings
from trace_core.sinks.consumer import sink_once
from trace_core.storage.local import LocalStore
from trace_core.tasks import lifecycle

THRESHOLD = 10**18
JOB = """kind: chain_sync
name: demo
chain_id: 1
mode: {kind: fixed_target, from_block: 0, to_block: 1000}
streams:
  transactions: {cryo_dataset_name: transactions, rpc_pool: p, chunk_size: 100, max_inflight: 1}
  blocks: {cryo_dataset_name: blocks, rpc_pool: p, chunk_size: 100, max_inflight: 1}
"""


def alert(
    name: str = "whale",
    reads: str = "[transactions]",
    sql: str = f"SELECT block_number, transaction_hash, value_f64 FROM transactions WHERE value_f64 > {THRESHOLD}",
    trigger: str = "{on_commit: true}",
    template: str = "{transaction_hash}",
    extra: str = "",
) -> str:
    return f"""kind: alert
name: {name}
job: demo
reads: {reads}
condition: "{sql}"
trigger: {trigger}
dedupe_key: "{name}:{template}"
severity: critical
channels:
  - webhook: {{url: "https://hooks.example.com/T/secret-token"}}
{extra}"""


def tx_table(start: int, end: int, big: dict[int, int]) -> pa.Table:
    """A cryo-like transactions table: one tx per block; ``big`` = {block: value}."""
    numbers = list(range(start, end))
    return pa.table(
        {
            "block_number": pa.array(numbers, pa.uint32()),
            "transaction_index": pa.array([0] * len(numbers), pa.uint64()),
            "transaction_hash": pa.array([n.to_bytes(32, "big") for n in numbers], pa.binary()),
            "value_f64": pa.array([float(big.get(n, 1000)) for n in numbers], pa.float64()),
            "chain_id": pa.array([1] * len(numbers), pa.uint64()),
        }
    )


@pytest.fixture
def store(trace_home: Path) -> LocalStore:
    return LocalStore(trace_home / "objects")


@pytest.fixture
def rt(settings: Settings, dbs: Databases, store: LocalStore) -> Iterator[Runtime]:
    runtime = Runtime(settings.model_copy(update={"heartbeat_seconds": 0.5}), dbs)
    runtime.__dict__["store"] = store  # the same LocalStore the Query Service reads
    yield runtime
    runtime.close()


def apply_job(rt: Runtime) -> None:
    loaded = parse_job(JOB, source="job.yaml")
    with rt.state() as conn:
        chain_sync_store.apply_job(conn, rt.settings.org_id, loaded.spec, loaded.raw, "job.yaml")


def apply(rt: Runtime, text: str) -> uuid.UUID:
    with rt.state() as conn:
        return apply_alert(
            conn, rt.settings.org_id, parse_alert(text, source="a.yaml"), "a.yaml"
        ).alert_id


def commit_event(rec: VersionRecord) -> dict[str, Any]:
    payload = {"job_name": "demo"}
    return routing.version_committed_event(payload, {**rec.as_json()})


def announce(rt: Runtime, rec: VersionRecord) -> None:
    """What a chain_sync range's commit writes in its transaction (``commit_version``), then
    drain."""
    with rt.state() as conn:
        with conn.transaction():
            events.announce_version_committed(conn, rec.as_json(), job_name="demo")
            events.announce_version_committed(conn, rec.as_json(), job_name="demo")  # a replay
        outbox.drain_all(conn, rt.queue)


def tasks(rt: Runtime) -> list[dict[str, Any]]:
    with rt.state() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM state.tasks WHERE operator = %s ORDER BY created_at", (OPERATOR,)
        ).fetchall()


def buffer_pointers(rt: Runtime) -> list[dict[str, Any]]:
    with rt.state() as conn:
        rows = conn.execute(
            "SELECT payload FROM state.outbox WHERE topic = %s ORDER BY created_at", (BUFFER_QUEUE,)
        ).fetchall()
    return [r[0] for r in rows]


def test_apply_is_idempotent_and_checks_job_and_streams(rt: Runtime) -> None:
    with pytest.raises(ConfigError, match=r"a.yaml:3: job: chain_sync job 'demo' is not applied"):
        apply(rt, alert())
    apply_job(rt)
    text = alert()
    with rt.state() as conn:
        first = apply_alert(conn, rt.settings.org_id, parse_alert(text), "a.yaml")
        again = apply_alert(conn, rt.settings.org_id, parse_alert(text), "a.yaml")
        edited = apply_alert(
            conn, rt.settings.org_id, parse_alert(text.replace("critical", "info")), "a.yaml"
        )
        row = get_alert(conn, rt.settings.org_id, "whale")
    assert (first.created, again.changed, edited.created, edited.changed) == (
        True,
        False,
        False,
        True,
    )
    assert (
        first.alert_id == again.alert_id == edited.alert_id == alert_id(rt.settings.org_id, "whale")
    )
    assert row.severity == "info" and row.as_json()["channels"] == [
        "webhook https://hooks.example.com/..."
    ]
    assert "secret-token" not in json.dumps(row.as_json())
    with pytest.raises(
        InvalidJobFile, match=r"a.yaml:4: reads\[1\]: job 'demo' has no active stream 'logs'"
    ):
        apply(
            rt,
            alert(name="other", reads="[transactions, logs]", sql="SELECT block_number FROM logs"),
        )


def test_a_committed_version_routes_to_one_evaluation_per_alert(
    rt: Runtime, settings: Settings, store: LocalStore, tmp_path: Path
) -> None:
    apply_job(rt)
    whale = apply(rt, alert())
    apply(
        rt,
        alert(
            name="blocky",
            reads="[blocks]",
            sql="SELECT block_number FROM blocks",
            template="{block_number}",
        ),
    )
    apply(rt, alert(name="disabled", extra="enabled: false\n"))
    apply(rt, alert(name="later", trigger="{schedule_seconds: 60}"))
    rec = publish(settings, store, tmp_path, tx_table(0, 100, {}), key="transactions", end=100)
    announce(rt, rec)
    with rt.state() as conn:
        assert conn.execute(
            "SELECT count(*) FROM state.outbox WHERE topic = %s", (DATASET_EVENTS,)
        ).fetchone() == (1,)
    # duplicates of the event, a hot-path event and a malformed one arrive on the same queue
    event = commit_event(rec)
    rt.queue.publish(DATASET_EVENTS, event)
    rt.queue.publish(
        DATASET_EVENTS,
        {"event": "hot_range_committed", "chain_id": 1, "range_start": 0, "range_end": 5},
    )
    rt.queue.publish(DATASET_EVENTS, {"event": routing.VERSION_COMMITTED, "job_name": "demo"})
    assert routing.route_dataset_events(rt) == 1
    rt.queue.publish(DATASET_EVENTS, event)
    assert routing.route_dataset_events(rt) == 0
    stats = rt.queue.stats(DATASET_EVENTS)
    assert (stats.depth, stats.in_flight) == (0, 0)

    [task] = tasks(rt)
    assert task["task_id"] == routing.evaluation_task_id(whale, str(rec.dataset_version))
    p = task["payload"]
    assert p["alert_name"] == "whale" and p["trigger"] == "on_commit"
    assert p["grants"] == [
        {
            "dataset_uuid": str(rec.dataset_uuid),
            "dataset_version": str(rec.dataset_version),
            "manifest_key": rec.manifest_key,
        }
    ]
    assert p["source"]["range_start"] == 0 and p["source"]["range_end"] == 100
    assert "job_name" not in p and "dataset_key" not in p  # not a stream partition's task
    assert "secret-token" not in json.dumps(p)  # channels never travel in task payloads
    with rt.state() as conn:
        wakeups = conn.execute(
            "SELECT count(*) FROM state.outbox WHERE payload->>'task_id' = %s",
            (str(task["task_id"]),),
        ).fetchone()
    assert wakeups == (1,)


def test_a_multi_stream_alert_waits_for_coverage(
    rt: Runtime, settings: Settings, store: LocalStore, tmp_path: Path
) -> None:
    apply_job(rt)
    both = apply(
        rt,
        alert(
            name="joined",
            reads="[transactions, blocks]",
            sql="SELECT t.block_number, t.transaction_hash FROM transactions t JOIN blocks b ON b.block_number = t.block_number",
        ),
    )
    txs = publish(settings, store, tmp_path, tx_table(0, 100, {}), key="transactions", end=100)
    with rt.state() as conn, conn.transaction():
        assert routing.route_event(conn, rt.settings.org_id, commit_event(txs), max_attempts=3) == 0
    from tests.integration.test_query_service import blocks_table

    blocks = publish(settings, store, tmp_path, blocks_table(0, 100), key="blocks", end=100)
    with rt.state() as conn, conn.transaction():
        assert (
            routing.route_event(conn, rt.settings.org_id, commit_event(blocks), max_attempts=3) == 1
        )
    [task] = tasks(rt)
    assert task["task_id"] == routing.evaluation_task_id(both, str(blocks.dataset_version))
    assert {g["dataset_version"] for g in task["payload"]["grants"]} == {
        str(txs.dataset_version),
        str(blocks.dataset_version),
    }


def test_schedules_fire_once_per_slot(
    rt: Runtime, settings: Settings, store: LocalStore, tmp_path: Path
) -> None:
    apply_job(rt)
    apply(rt, alert(trigger="{schedule_seconds: 60}"))
    with rt.state() as conn:
        assert routing.schedule_due_alerts(conn, rt.settings.org_id, max_attempts=3) == 0  # no data
        assert routing.schedule_due_alerts(conn, rt.settings.org_id, max_attempts=3) == 0  # not due
        conn.execute("UPDATE state.alert_definitions SET next_scheduled_at = now()")
        rec = publish(settings, store, tmp_path, tx_table(0, 100, {}), key="transactions", end=100)
        assert routing.schedule_due_alerts(conn, rt.settings.org_id, max_attempts=3) == 1
        assert routing.schedule_due_alerts(conn, rt.settings.org_id, max_attempts=3) == 0
        [row] = list_alerts(conn, rt.settings.org_id)
    [task] = tasks(rt)
    assert task["payload"]["trigger"] == "schedule"
    assert [g["dataset_version"] for g in task["payload"]["grants"]] == [str(rec.dataset_version)]
    assert row.next_scheduled_at is not None and row.next_scheduled_at > datetime.now(UTC)


@pytest.fixture
def query_service(rt: Runtime, dbs: Databases, store: LocalStore) -> Iterator[Runtime]:
    """The Query Service under uvicorn; yields a runtime whose query_url points at it."""
    app = create_app(rt.settings, dbs, store, hot_sources=None)
    with serving(app) as client:
        served = Runtime(rt.settings.model_copy(update={"query_url": str(client.base_url)}), dbs)
        served.__dict__["store"] = store
        yield served
        served.close()


def test_evaluation_publishes_one_fenced_batch_and_a_stale_attempt_publishes_none(
    query_service: Runtime, settings: Settings, store: LocalStore, tmp_path: Path, dbs: Databases
) -> None:
    rt = query_service
    apply_job(rt)
    apply(rt, alert())
    big = {17: 3 * THRESHOLD, 42: 2 * THRESHOLD}
    rec = publish(settings, store, tmp_path, tx_table(0, 100, big), key="transactions", end=100)
    other = publish(
        settings,
        store,
        tmp_path,
        tx_table(100, 200, {150: 5 * THRESHOLD}),
        key="transactions",
        start=100,
        end=200,
    )
    with rt.state() as conn, conn.transaction():
        routing.route_event(conn, rt.settings.org_id, commit_event(rec), max_attempts=3)
    [task] = tasks(rt)
    task_id = task["task_id"]

    # attempt 1 runs to its staged batch, then its worker "dies" (the lease just expires)
    with rt.state() as conn, conn.transaction():
        lease1 = lifecycle.claim(conn, task_id, lease_seconds=1)
    token1 = capability_token_for(rt, lease1)
    completion1 = alert_evaluate_operator(OperatorContext(rt, lease1, threading.Event(), token1))
    assert completion1.outputs["events"] == 2
    assert store.exists(f"batches/{task_id}/1/alert_events.jsonl")
    deadline = time.monotonic() + 10
    while True:
        with rt.state() as conn, conn.transaction():
            if lifecycle.reap(conn, policy=rt.retry_policy, rewake_after_seconds=600).retried:
                break
        assert time.monotonic() < deadline, "attempt 1's lease never expired"
        time.sleep(0.1)

    outcome = execute_task(rt, task_id)
    assert outcome.status == "succeeded" and outcome.attempt == 2
    assert outcome.outputs["events"] == 2
    # the dead attempt comes back: its commit is fenced off and its token reads nothing
    with rt.state() as conn, pytest.raises(StaleAttempt), conn.transaction():
        assert completion1.commit is not None
        completion1.commit(conn)
    with pytest.raises(QueryError) as refused:
        task_query(rt.settings, token1, "SELECT 1 AS x FROM transactions", max_rows=1)
    assert refused.value.code == "stale_attempt"
    [pointer] = buffer_pointers(rt)
    assert (pointer["attempt"], pointer["batch_key"]) == (
        2,
        f"batches/{task_id}/2/alert_events.jsonl",
    )

    rt.queue.publish(BUFFER_QUEUE, pointer)  # a duplicated pointer changes nothing
    with rt.state() as conn:
        outbox.drain_all(conn, rt.queue)
    while not sink_once(rt).idle:
        pass
    with psycopg.connect(dbs.data_url, row_factory=dict_row) as conn:
        events = conn.execute("SELECT * FROM data.alert_events ORDER BY block_number").fetchall()
    assert [e["dedupe_key"] for e in events] == [
        "whale:0x" + (17).to_bytes(32, "big").hex(),
        "whale:0x" + (42).to_bytes(32, "big").hex(),
    ]  # block 150 lives in a version this evaluation was not granted
    assert all(e["source_attempt"] == 2 and e["severity"] == "critical" for e in events)
    assert events[0]["payload"]["source"]["dataset_version"] == str(rec.dataset_version)
    assert str(other.dataset_version) not in json.dumps([e["payload"] for e in events])


def test_query_service_down_is_retryable_and_a_bad_template_is_fatal(
    rt: Runtime, settings: Settings, store: LocalStore, tmp_path: Path, query_service: Runtime
) -> None:
    apply_job(rt)
    apply(rt, alert())
    apply(rt, alert(name="broken", template="{no_such_column}"))
    rec = publish(
        settings, store, tmp_path, tx_table(0, 100, {5: 2 * THRESHOLD}), key="transactions", end=100
    )
    with rt.state() as conn, conn.transaction():
        assert routing.route_event(conn, rt.settings.org_id, commit_event(rec), max_attempts=3) == 2
    by_name = {t["payload"]["alert_name"]: t["task_id"] for t in tasks(rt)}
    down = Runtime(rt.settings.model_copy(update={"query_url": "http://127.0.0.1:9"}), rt.dbs)
    try:
        outcome = execute_task(down, by_name["whale"])
    finally:
        down.close()
    assert outcome.status == "retry" and "QueryServiceUnavailable" in (outcome.error or "")
    broken = execute_task(query_service, by_name["broken"])
    assert broken.status == "dead" and "no_such_column" in (broken.error or "")
    assert buffer_pointers(rt) == []


def test_alerts_cli(rt: Runtime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert rt.settings.state_url and rt.settings.data_url
    monkeypatch.setenv("TRACE_HOME", str(rt.settings.home))
    monkeypatch.setenv("TRACE_STATE_URL", rt.settings.state_url.get_secret_value())
    monkeypatch.setenv("TRACE_DATA_URL", rt.settings.data_url.get_secret_value())
    apply_job(rt)
    good, bad = tmp_path / "whale.yaml", tmp_path / "bad.yaml"
    good.write_text(alert())
    bad.write_text(alert().replace("severity: critical", "severity: loud"))
    runner = CliRunner()
    first = runner.invoke(cli, ["alerts", "apply", "--file", str(good)])
    assert first.exit_code == 0 and "name=whale created" in first.output, first.output
    assert (
        "name=whale unchanged"
        in runner.invoke(cli, ["alerts", "apply", "--file", str(good)]).output
    )
    refused = runner.invoke(cli, ["alerts", "apply", "--file", str(bad)])
    assert refused.exit_code == 2 and f"{bad}:8: severity" in refused.output
    listed = json.loads(runner.invoke(cli, ["alerts", "list", "--json"]).output)
    [row] = listed["alerts"]
    assert row["name"] == "whale" and row["trigger"] == {"on_commit": True}
    table = runner.invoke(cli, ["alerts", "list"]).output
    assert "whale" in table and "secret-token" not in table + json.dumps(listed)
    deliveries = runner.invoke(cli, ["alerts", "deliveries", "--json"])
    assert deliveries.exit_code == 0 and json.loads(deliveries.output) == {"deliveries": []}
