"""A reorg under a follow_head job with an alert: the hot path's invalidation is consumed once,
the committed ranges over the abandoned fork are re-synced as new versions, and the live alert
set ends equal to the canonical chain's (real anvil, cryo, Postgres, Query Service, Dagster)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from dagster import DagsterInstance, instance_for_test
from psycopg.rows import dict_row

from tests.integration.test_query_service import serving
from trace_core.alerts.spec import load_alert_file
from trace_core.alerts.store import apply_alert
from trace_core.chain_sync import store
from trace_core.chain_sync.yamlload import load_job_file
from trace_core.datasets import registry
from trace_core.db.migrate import migrate
from trace_core.integrity import verify
from trace_core.query.app import create_app
from trace_core.runtime import Runtime
from trace_core.settings import Settings, load_settings
from trace_dagster.definitions import build_definitions
from trace_dagster.driver import drive_until_idle
from trace_lite.devtools.devchain import DevChain

BIG = 10**18
JOB = """kind: chain_sync
name: reorged
chain_id: {chain_id}
mode:
  kind: follow_head
  from_block: 0
  tail_lag: 2
  head_poll_interval_seconds: 1
  max_head_age_seconds: 60
streams:
  transactions: {{cryo_dataset_name: transactions, rpc_pool: reorg, chunk_size: 10, max_inflight: 4}}
hot: {{rpc_pool: reorg}}
"""
ALERT = """kind: alert
name: whale
job: reorged
reads: [transactions]
condition: |
  SELECT block_number, transaction_hash, value_string AS value_wei
  FROM transactions WHERE value_f64 >= 1e18
trigger: {on_commit: true}
dedupe_key: "whale:{transaction_hash}"
severity: critical
channels:
  - log: {}
"""


@pytest.fixture
def dagster_instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as instance:
        yield instance


def _send(chain: DevChain, frm: int, to: int, value: int) -> str:
    accounts = chain.rpc.call("eth_accounts")
    tx: str = chain.rpc.call(
        "eth_sendTransaction",
        [{"from": accounts[frm], "to": accounts[to], "value": hex(value), "gas": hex(21_000)}],
    )
    return tx


def _live_alerts(rt: Runtime) -> dict[str, str | None]:
    with psycopg.connect(rt.dbs.data_url, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT tx_hash, stale_reason FROM data.alert_events").fetchall()
    return {r["tx_hash"]: r["stale_reason"] for r in rows}


def _drive_until(
    rt: Runtime, instance: DagsterInstance, done: Callable[[], bool], timeout: float = 180
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        report = drive_until_idle(rt, build_definitions(rt), instance, timeout=60, poll_seconds=0.2)
        assert report.dead_tasks == 0 and report.failed_runs == 0, report
        if done():
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.5)


def _canonical_whales(chain: DevChain, end: int) -> set[str]:
    blocks = chain.rpc.batch([("eth_getBlockByNumber", [hex(n), True]) for n in range(end)])
    return {tx["hash"] for b in blocks for tx in b["transactions"] if int(tx["value"], 16) >= BIG}


def test_reorg_replans_committed_ranges_and_alerts_once(
    trace_env: Runtime,
    settings: Settings,
    dagster_instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    with DevChain.start(blocks=40, seed=11) as chain:
        monkeypatch.setenv("TRACE_RPC_POOL_REORG_URL", chain.rpc_url)
        rt = Runtime(load_settings())
        migrate(rt.dbs)
        job_file, alert_file = tmp_path / "job.yaml", tmp_path / "alert.yaml"
        job_file.write_text(JOB.format(chain_id=chain.chain_id))
        alert_file.write_text(ALERT)
        spec, raw = load_job_file(job_file)
        with rt.state() as conn:
            store.apply_job(conn, rt.settings.org_id, spec, raw, str(job_file))
            apply_alert(conn, rt.settings.org_id, load_alert_file(alert_file), str(alert_file))

        app = create_app(rt.settings, rt.dbs, rt.store)
        with serving(app) as client:
            monkeypatch.setenv("TRACE_QUERY_URL", str(client.base_url))
            rt = Runtime(load_settings())
            _drive_until(rt, dagster_instance, lambda: True)
            fork = chain.head()
            snapshot = chain.rpc.call("evm_snapshot")
            tx_a = _send(chain, 1, 2, BIG)
            chain.wait_receipt(tx_a)
            chain.mine(75 - chain.head())
            _drive_until(rt, dagster_instance, lambda: tx_a in _live_alerts(rt))
            assert _live_alerts(rt) == {tx_a: None}

            # the reorg: the fork after `fork` is abandoned; the new branch carries another
            # whale transfer and grows past the old tip
            assert chain.rpc.call("evm_revert", [snapshot]) is True
            assert chain.head() == fork
            tx_b = _send(chain, 3, 4, 2 * BIG)
            chain.wait_receipt(tx_b)
            chain.mine(85 - chain.head())

            def settled() -> bool:
                alerts = _live_alerts(rt)
                return tx_b in alerts and alerts.get(tx_a) is not None

            _drive_until(rt, dagster_instance, settled)
            # another pass finds nothing more to do
            _drive_until(rt, dagster_instance, lambda: True)

        with psycopg.connect(rt.dbs.data_url, row_factory=dict_row) as conn:
            invalidations = conn.execute(
                "SELECT * FROM data.data_invalidations ORDER BY invalidation_id"
            ).fetchall()
        [inv] = invalidations
        assert inv["reason"] == "reorg" and inv["range_start"] == fork + 1
        assert inv["consumed_at"] is not None
        repaired = inv["consumed"]["repair_tasks"]
        assert inv["consumed"]["stale_events"] == [f"whale:{tx_a}"]

        with rt.state() as conn, conn.cursor(row_factory=dict_row) as cur:
            tasks = cur.execute(
                "SELECT task_id, status, payload, outputs FROM state.tasks WHERE payload ? 'repair'"
            ).fetchall()
            evals = cur.execute(
                "SELECT payload FROM state.tasks WHERE operator = 'alert_evaluate'"
            ).fetchall()
            versions = registry.versions_for_stream(
                conn, rt.settings.org_id, chain.chain_id, "transactions"
            )
        # every committed range over the abandoned blocks was re-synced once, as a new version
        assert sorted(str(t["task_id"]) for t in tasks) == sorted(repaired) and repaired
        assert all(t["status"] == "succeeded" for t in tasks)
        spans = sorted((t["payload"]["range_start"], t["payload"]["range_end"]) for t in tasks)
        assert spans[0][0] <= fork + 1 < spans[0][1] and len(set(spans)) == len(spans)
        # each replacement version was evaluated exactly once
        pins = Counter(g["dataset_version"] for e in evals for g in e["payload"]["grants"])
        assert all(pins[t["outputs"]["dataset_version"]] == 1 for t in tasks)

        top = versions[-1].range_end
        canonical = _canonical_whales(chain, top)
        assert canonical == {tx_b}
        live = {tx for tx, stale in _live_alerts(rt).items() if stale is None}
        assert live == canonical
        assert "reorg" in str(_live_alerts(rt)[tx_a])
        # and the cold data now verifies against the canonical chain
        [report] = verify.verify(rt, job="reorged")
        assert report.passed and report.rpc_checked, report.as_json()
