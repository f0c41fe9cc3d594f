"""Alerting end to end on a real anvil chain with real cryo, driven through Dagster.

A transfer above the threshold yields exactly one alert event and exactly one webhook
delivery to a local HTTP receiver, although every evaluation's first attempt stages its
batch and then dies (its lease expires and the reaper re-wakes it), and the dataset events
and task wake-ups are all delivered twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from dagster import DagsterInstance, instance_for_test
from psycopg.rows import dict_row

from tests.integration.test_alerts_delivery import Receiver, receiver  # noqa: F401 - fixture
from tests.integration.test_query_service import serving
from trace_core.alerts import routing
from trace_core.alerts.evaluate import OPERATOR
from trace_core.alerts.spec import load_alert_file
from trace_core.alerts.store import alert_id, apply_alert
from trace_core.chain_sync import store
from trace_core.chain_sync.yamlload import load_job_file
from trace_core.datasets import registry
from trace_core.db.migrate import migrate
from trace_core.engine import registry as operator_registry
from trace_core.errors import StaleAttempt
from trace_core.hot.follower import DATASET_EVENTS
from trace_core.operators.base import Completion, OperatorContext, OperatorRegistry
from trace_core.query.app import create_app
from trace_core.queue.base import BUFFER_QUEUE, TASK_WAKEUP, outbox_publishing
from trace_core.runtime import Runtime
from trace_core.settings import Settings, load_settings
from trace_dagster.definitions import build_definitions
from trace_dagster.driver import DriveReport, drive_until_idle
from trace_lite.devtools.devchain import DevChain

BIG_VALUE = 5 * 10**18  # the seeded activity moves at most 10**15 wei per transfer
JOB = """kind: chain_sync
name: e2e_alerts
chain_id: {chain_id}
mode: {{kind: fixed_target, from_block: 0, to_block: 400}}
streams:
  transactions: {{cryo_dataset_name: transactions, rpc_pool: alerts, chunk_size: 200, max_inflight: 2}}
"""
ALERT = """kind: alert
name: whale_transfer
job: e2e_alerts
reads: [transactions]
condition: |
  SELECT block_number, transaction_hash, value_string AS value_wei
  FROM transactions WHERE value_f64 >= 1e18
trigger: {{on_commit: true}}
dedupe_key: "whale_transfer:{{transaction_hash}}"
severity: critical
channels:
  - webhook: {{url: "{url}", timeout_seconds: 5}}
"""


def dying_first_attempts(
    real: Callable[[], OperatorRegistry], died: list[tuple[str, int]]
) -> Callable[[], OperatorRegistry]:
    """A registry whose alert_evaluate runs for real, but each task's attempt 1 then "dies":
    it has staged its batch and leaves without completing (the lease just expires)."""

    def build() -> OperatorRegistry:
        reg = real()
        op = reg.get(OPERATOR)

        def evaluate(ctx: OperatorContext) -> Completion:
            completion = op(ctx)
            if ctx.lease.attempt == 1:
                died.append((str(ctx.lease.task_id), completion.outputs["events"]))
                raise StaleAttempt(ctx.lease.task_id, 1, "simulated worker death after staging")
            return completion

        reg.register(OPERATOR, evaluate, queries=True)
        return reg

    return build


@pytest.fixture
def alert_env(trace_env: Runtime, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """``trace_env`` plus short leases, so an abandoned attempt expires within the test."""
    monkeypatch.setenv("TRACE_HEARTBEAT_SECONDS", "0.5")
    monkeypatch.setenv("TRACE_LEASE_SECONDS", "2")
    monkeypatch.setenv("TRACE_ALERT_DELIVERY_BACKOFF_BASE_SECONDS", "0")
    return settings


@pytest.fixture
def dagster_instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as instance:
        yield instance


def test_one_transfer_one_event_one_delivery_despite_kills_and_duplicates(
    alert_env: Settings,
    dagster_instance: DagsterInstance,
    receiver: Receiver,  # noqa: F811 - the imported fixture
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    with DevChain.start(blocks=300, seed=3) as chain:
        accounts = chain.rpc.call("eth_accounts")
        tx_hash = chain.rpc.call(
            "eth_sendTransaction",
            [{"from": accounts[1], "to": accounts[2], "value": hex(BIG_VALUE), "gas": hex(21_000)}],
        )
        big_block = int(chain.wait_receipt(tx_hash)["blockNumber"], 16)
        chain.mine(400 - chain.head() - 1)
        assert chain.head() == 399 and 0 < big_block < 400
        monkeypatch.setenv("TRACE_RPC_POOL_ALERTS_URL", chain.rpc_url)

        rt = Runtime(load_settings())
        migrate(rt.dbs)
        job_file, alert_file = tmp_path / "job.yaml", tmp_path / "alert.yaml"
        job_file.write_text(JOB.format(chain_id=chain.chain_id))
        alert_file.write_text(ALERT.format(url=receiver.url()))
        spec, raw = load_job_file(job_file)
        with rt.state() as conn:
            store.apply_job(conn, rt.settings.org_id, spec, raw, str(job_file))
            apply_alert(conn, rt.settings.org_id, load_alert_file(alert_file), str(alert_file))

        died: list[tuple[str, int]] = []
        monkeypatch.setattr(
            operator_registry,
            "default_registry",
            dying_first_attempts(operator_registry.default_registry, died),
        )
        duplicated: set[str] = set()

        def duplicate_everything(report: DriveReport) -> None:
            """Deliver every dataset event and every evaluation wake-up a second time."""
            with rt.state() as conn:
                events = conn.execute(
                    "SELECT outbox_id, payload FROM state.outbox WHERE topic = %s",
                    (DATASET_EVENTS,),
                ).fetchall()
                evals = conn.execute(
                    "SELECT task_id FROM state.tasks WHERE operator = %s", (OPERATOR,)
                ).fetchall()
            for oid, payload in events:
                if str(oid) not in duplicated:
                    duplicated.add(str(oid))
                    rt.queue.publish(DATASET_EVENTS, payload)
            for (task_id,) in evals:
                if str(task_id) not in duplicated:
                    duplicated.add(str(task_id))
                    with outbox_publishing():  # a redelivery of the outbox's publish
                        rt.queue.publish(TASK_WAKEUP, {"task_id": str(task_id), "wakeup": 1})

        app = create_app(rt.settings, rt.dbs, rt.store)
        with serving(app) as client:
            monkeypatch.setenv("TRACE_QUERY_URL", str(client.base_url))
            drive_rt = Runtime(load_settings())
            report = drive_until_idle(
                drive_rt,
                build_definitions(drive_rt),
                dagster_instance,
                timeout=240,
                poll_seconds=0.2,
                on_tick=duplicate_everything,
            )
        assert report.idle and report.dead_tasks == 0, report

    # both committed ranges were evaluated; every first attempt died after staging
    with rt.state() as conn, conn.cursor(row_factory=dict_row) as cur:
        evals = cur.execute(
            "SELECT task_id, status, attempt, outputs FROM state.tasks WHERE operator = %s",
            (OPERATOR,),
        ).fetchall()
        pointers = cur.execute(
            "SELECT payload FROM state.outbox WHERE topic = %s", (BUFFER_QUEUE,)
        ).fetchall()
    assert len(evals) == 2 and all(e["status"] == "succeeded" and e["attempt"] == 2 for e in evals)
    assert sorted(n for _, n in died) == [0, 1] and len(died) == 2
    assert sorted(e["outputs"]["events"] for e in evals) == [0, 1]
    assert len(duplicated) == 4  # two dataset events, two evaluations, each delivered twice
    [pointer] = [p["payload"] for p in pointers]
    assert pointer["attempt"] == 2  # the dead attempt's staged batch was never published

    with psycopg.connect(rt.dbs.data_url, row_factory=dict_row) as conn:
        events = conn.execute("SELECT * FROM data.alert_events").fetchall()
        deliveries = conn.execute("SELECT * FROM data.alert_deliveries").fetchall()
    [event] = events
    assert event["dedupe_key"] == f"whale_transfer:{tx_hash}"
    assert (event["block_number"], event["tx_hash"]) == (big_block, tx_hash)
    assert event["payload"]["row"]["value_wei"] == str(BIG_VALUE)
    [delivery] = deliveries
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 1)
    [seen] = receiver.seen
    assert seen.body["dedupe_key"] == event["dedupe_key"]
    assert seen.headers["Idempotency-Key"] == str(delivery["delivery_id"])
    with rt.state() as conn:
        versions = registry.versions_for_stream(
            conn, rt.settings.org_id, chain.chain_id, "transactions"
        )
    whale = alert_id(rt.settings.org_id, "whale_transfer")
    assert {e["task_id"] for e in evals} == {
        routing.evaluation_task_id(whale, str(v.dataset_version)) for v in versions
    }
