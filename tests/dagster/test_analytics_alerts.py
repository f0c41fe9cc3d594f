"""Alerts and ``--job`` queries over analytics outputs, end to end: a real archive anvil chain,
the demo_analytics job (examples/chain_sync.demo_analytics.yaml, shortened) synced with real
cryo through Dagster, the analytics assets committing ``analytics_*`` versions, their
``dataset_version_committed`` events routed to the example alerts of
examples/analytics_alerts/, evaluated through a real Query Service with pinned grants, and
delivered. Every matching row fires once; re-materializing and replayed events fire nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dagster import DagsterInstance, Definitions, instance_for_test, materialize
from psycopg.rows import dict_row

from tests.conftest import clone_databases, drop_databases
from tests.integration.test_query_service import serving
from trace_core.alerts import routing
from trace_core.alerts.evaluate import OPERATOR
from trace_core.alerts.spec import load_alert_file, parse_alert
from trace_core.alerts.store import alert_id, apply_alert
from trace_core.chain_sync import store
from trace_core.chain_sync.analytics_spec import job_dataset_key
from trace_core.chain_sync.planner import range_partition_key
from trace_core.chain_sync.yamlload import load_job_file, parse_job
from trace_core.datasets.events import DATASET_EVENTS
from trace_core.errors import AccessDenied, InvalidJobFile, QueryError
from trace_core.query.app import create_app
from trace_core.query.attach import user_versions
from trace_core.query.client import query_http
from trace_core.query.tokens import issue_user_token, verify_user_token
from trace_core.rpc.client import hex_int
from trace_core.runtime import Runtime
from trace_core.settings import REPO_ROOT, load_settings
from trace_dagster.analytics import analytics_asset_key
from trace_dagster.definitions import build_definitions
from trace_dagster.driver import drive_until_idle
from trace_lite.devtools import devstaking
from trace_lite.devtools.devchain import DevChain

BLOCKS = 400
ETH = 10**18
WHALE = "0x00000000000000000000000000000000000beef1"
EXAMPLES = REPO_ROOT / "examples" / "analytics_alerts"
OUTPUTS = {
    f"analytics_{n}"
    for n in (
        "balance_changes",
        "supply_deltas",
        "native_supply",
        "top_accounts",
        "top_account_history",
        "account_balances",
        "staking_events",
        "validator_stake",
        "staking_concentration",
        "delegator_stake",
    )
}
OTHER_JOB = """kind: chain_sync
name: other
chain_id: {chain_id}
mode: {{kind: fixed_target, from_block: 0, to_block: 10}}
streams:
  logs: {{cryo_dataset_name: logs, rpc_pool: demo, chunk_size: 10, max_inflight: 1}}
"""


def demo_job_text() -> str:
    """The demo_analytics example, shortened to BLOCKS blocks in two ranges per stream, without
    its Monad supply rules (tests/dagster/test_monad_supply.py covers them)."""
    text = (REPO_ROOT / "examples" / "chain_sync.demo_analytics.yaml").read_text()
    for old, new in (
        ("to_block: 2000", f"to_block: {BLOCKS}"),
        ("chunk_size: 500", "chunk_size: 200"),
    ):
        assert old in text
        text = text.replace(old, new)
    # this chain is plain anvil, not Monad-shaped: no supply-by-protocol block, and none of
    # the blocks and transactions streams it reads
    text = text[: text.index("  # Supply reconciles")]
    for stream in ("blocks", "transactions"):
        stanza = (
            f"  {stream}:\n    cryo_dataset_name: {stream}\n    rpc_pool: demo\n"
            "    chunk_size: 200\n    max_inflight: 4\n"
        )
        assert stanza in text
        text = text.replace(stanza, "")
    return text


@dataclass
class Alerted:
    rt: Runtime
    chain: DevChain
    instance: DagsterInstance
    defs: Definitions
    query_url: str


def counts(rt: Runtime) -> dict[str, int]:
    with rt.state() as conn:
        state = conn.execute(
            "SELECT (SELECT count(*) FROM state.dataset_versions),"
            " (SELECT count(*) FROM state.outbox WHERE topic = %s),"
            " (SELECT count(*) FROM state.tasks WHERE operator = %s)",
            (DATASET_EVENTS, OPERATOR),
        ).fetchone()
    with psycopg.connect(rt.dbs.data_url) as conn:
        data = conn.execute(
            "SELECT (SELECT count(*) FROM data.alert_events),"
            " (SELECT count(*) FROM data.alert_deliveries)"
        ).fetchone()
    assert state is not None and data is not None
    return dict(
        zip(
            ["versions", "events_out", "evaluations", "alerts", "deliveries"],
            [*state, *data],
            strict=True,
        )
    )


def drive(s: Alerted) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACE_QUERY_URL", s.query_url)
        rt = Runtime(load_settings())
        try:
            report = drive_until_idle(rt, s.defs, s.instance, timeout=240, poll_seconds=0.2)
        finally:
            rt.close()
    assert report.idle and report.dead_tasks == 0 and report.failed_runs == 0, report


@pytest.fixture(scope="module")
def alerted(
    pg_server_url: str, template_dbs: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Alerted]:
    dbs = clone_databases(pg_server_url)
    home = tmp_path_factory.mktemp("analerts_home")
    with (
        pytest.MonkeyPatch.context() as mp,
        DevChain.start(blocks=120, seed=3, chain_id=31337, archive=True) as chain,
        instance_for_test() as instance,
    ):
        accounts = chain.rpc.call("eth_accounts")
        for sender in accounts[7:10]:  # a whale that is rank 1 from block ~120 on
            tx = {"from": sender, "to": WHALE, "value": hex(9000 * ETH), "gas": hex(21_000)}
            chain.wait_receipt(chain.rpc.call("eth_sendTransaction", [tx]))
        devstaking.drive(chain, validators=3, actions=12)
        chain.seed(BLOCKS, seed=5)
        for k, v in {
            "TRACE_RETRY_BASE_SECONDS": "0",
            "TRACE_HEARTBEAT_SECONDS": "1",
            "TRACE_HOME": str(home),
            "TRACE_STATE_URL": dbs.state_url,
            "TRACE_DATA_URL": dbs.data_url,
            "TRACE_RPC_POOL_DEMO_URL": chain.rpc_url,
        }.items():
            mp.setenv(k, v)
        rt = Runtime(load_settings())
        from trace_core.db.migrate import migrate

        migrate(rt.dbs)
        job_file = home / "demo_analytics.yaml"
        job_file.write_text(demo_job_text())
        spec, raw = load_job_file(job_file)
        with rt.state() as conn:
            store.apply_job(conn, rt.settings.org_id, spec, raw, str(job_file))
            for path in sorted(EXAMPLES.glob("*.yaml")):
                apply_alert(conn, rt.settings.org_id, load_alert_file(path), str(path))
        defs = build_definitions(rt)
        app = create_app(rt.settings, rt.dbs, rt.store, hot_sources=None)
        try:
            with serving(app) as client:
                s = Alerted(rt, chain, instance, defs, str(client.base_url))
                drive(s)
                yield s
        finally:
            rt.close()
    drop_databases(pg_server_url, dbs)


def all_versions(rt: Runtime, key: str) -> list[str]:
    """Every committed version of ``key`` (superseded roll-ups included)."""
    with rt.state() as conn:
        rows = conn.execute(
            "SELECT v.dataset_version FROM state.dataset_versions v JOIN state.datasets d"
            " USING (dataset_uuid) WHERE d.dataset_key = %s",
            (key,),
        ).fetchall()
    return [str(r[0]) for r in rows]


def events_of(rt: Runtime, name: str) -> list[dict[str, Any]]:
    with psycopg.connect(rt.dbs.data_url, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT e.*, d.status AS delivery FROM data.alert_events e"
            " LEFT JOIN data.alert_deliveries d USING (dedupe_key)"
            " WHERE e.alert_name = %s ORDER BY e.block_number",
            (name,),
        ).fetchall()


def test_alerts_on_analytics_outputs_fire_once_per_matching_row(alerted: Alerted) -> None:
    s, org = alerted, alerted.rt.settings.org_id
    # every committed version of each output read was routed to one evaluation, pinned to it
    for name, key in (
        ("supply_burn", "analytics_native_supply"),
        ("top_account_whale", "analytics_top_accounts"),
    ):
        versions = all_versions(s.rt, job_dataset_key("demo_analytics", key))
        assert versions
        with s.rt.state() as conn, conn.cursor(row_factory=dict_row) as cur:
            evals = cur.execute(
                "SELECT task_id, status, payload FROM state.tasks WHERE operator = %s"
                " AND payload->>'alert_name' = %s",
                (OPERATOR, name),
            ).fetchall()
        aid = alert_id(org, name)
        assert {e["task_id"] for e in evals} == {
            routing.evaluation_task_id(aid, v) for v in versions
        }
        assert all(e["status"] == "succeeded" for e in evals)
        for e in evals:
            assert [g["dataset_version"] for g in e["payload"]["grants"]] == [
                e["payload"]["source"]["dataset_version"]
            ]
            assert e["payload"]["source"]["job_name"] == "demo_analytics"

    # supply: one event per block that burnt fees, the amount as the chain says it
    blocks = s.chain.rpc.batch([("eth_getBlockByNumber", [hex(b), False]) for b in range(BLOCKS)])
    burnt = {
        b: hex_int(blk["baseFeePerGas"]) * hex_int(blk["gasUsed"]) for b, blk in enumerate(blocks)
    }
    expected = {b: v for b, v in burnt.items() if v > 0}
    assert 10 < len(expected) < BLOCKS
    supply = events_of(s.rt, "supply_burn")
    assert [e["dedupe_key"] for e in supply] == [f"supply_burn:{b}" for b in sorted(expected)]
    assert {e["block_number"]: int(e["payload"]["row"]["burned_wei"]) for e in supply} == expected
    assert all(e["delivery"] == "delivered" for e in supply)

    # top accounts: the whale, once, with its balance at the last synced block
    [whale] = events_of(s.rt, "top_account_whale")
    balance = hex_int(s.chain.rpc.call("eth_getBalance", [WHALE, hex(BLOCKS - 1)]))
    assert whale["dedupe_key"] == f"top_account_whale:{WHALE}"
    assert int(whale["payload"]["row"]["balance_wei"]) == balance == 27_000 * ETH
    assert whale["delivery"] == "delivered"


def test_rematerializing_and_replayed_events_do_not_refire(alerted: Alerted) -> None:
    s = alerted
    before = counts(s.rt)
    assert before["alerts"] > 0
    assets = [a for a in s.defs.assets or [] if hasattr(a, "keys")]
    for name, partition in (
        ("balance_changes", range_partition_key(0, 100_000)),  # the epoch: all its ranges
        ("native_supply", None),
        ("top_accounts", None),
    ):
        key = analytics_asset_key("demo_analytics", name)
        res = materialize(
            [a for a in assets if key in a.keys],  # type: ignore[union-attr]
            instance=s.instance,
            partition_key=partition,
            resources=dict(s.defs.resources or {}),
        )
        assert res.success
    assert counts(s.rt) == before  # same inputs: no new version, hence no event
    # every dataset event delivered once more: routing creates no evaluation twice
    with s.rt.state() as conn:
        payloads = [
            r[0]
            for r in conn.execute(
                "SELECT payload FROM state.outbox WHERE topic = %s", (DATASET_EVENTS,)
            ).fetchall()
        ]
    supply_key = job_dataset_key("demo_analytics", "analytics_native_supply")
    assert any(p["dataset_key"] == supply_key for p in payloads)
    for p in payloads:
        s.rt.queue.publish(DATASET_EVENTS, p)
    drive(s)
    assert counts(s.rt) == before


def test_query_job_lists_and_serves_the_jobs_analytics_outputs(alerted: Alerted) -> None:
    s, settings = alerted, alerted.rt.settings
    with s.rt.state() as conn:
        loaded = parse_job(OTHER_JOB.format(chain_id=s.chain.chain_id), source="other.yaml")
        store.apply_job(conn, settings.org_id, loaded.spec, loaded.raw, "other.yaml")
        everything = verify_user_token(
            settings, issue_user_token(settings, sub="u", datasets="all")
        )
        listed = user_versions(conn, everything, job="demo_analytics")
        assert set(listed) == OUTPUTS | {"geth_balance_diffs", "logs"}
        assert not OUTPUTS & set(user_versions(conn, everything, job="other"))
        # the grants model holds: a token without the dataset cannot read it through the job
        narrow = verify_user_token(
            settings, issue_user_token(settings, sub="u", datasets=["analytics_top_accounts"])
        )
        assert set(user_versions(conn, narrow, job="demo_analytics")) == {"analytics_top_accounts"}
        with pytest.raises(AccessDenied, match="analytics_native_supply.*not granted"):
            user_versions(conn, narrow, requested=["analytics_native_supply"], job="demo_analytics")
    cfg = settings.model_copy(update={"query_url": s.query_url})
    sql = "SELECT max(block_number) AS b, count(*) AS n FROM analytics_native_supply"
    [row] = query_http(cfg, sql, "demo_analytics")["rows"]  # UBIGINT travels as a string
    assert [int(v) for v in row] == [BLOCKS - 1, BLOCKS]
    top = query_http(
        cfg, "SELECT address FROM analytics_top_accounts WHERE rank = 1", "demo_analytics"
    )
    assert top["rows"] == [[WHALE]]
    with pytest.raises(QueryError) as refused:
        query_http(cfg, sql, "other")
    assert refused.value.code == "sql_forbidden_relation"


def test_an_alert_may_read_only_outputs_its_job_produces(alerted: Alerted, tmp_path: Path) -> None:
    s = alerted
    text = (EXAMPLES / "supply_burn.yaml").read_text()
    cases = (
        (text.replace("job: demo_analytics", "job: other"), "job 'other' has no analytics: block"),
        (
            text.replace(
                "reads: [analytics_native_supply]",
                "reads: [analytics_native_supply, analytics_nope]",
            ),
            "job 'demo_analytics' produces no analytics output 'analytics_nope' (its analytics "
            "outputs: analytics_account_balances, analytics_balance_changes,",
        ),
    )
    with s.rt.state() as conn:
        if not any(j.name == "other" for j in store.list_jobs(conn, s.rt.settings.org_id)):
            loaded = parse_job(OTHER_JOB.format(chain_id=s.chain.chain_id), source="other.yaml")
            store.apply_job(conn, s.rt.settings.org_id, loaded.spec, loaded.raw, "other.yaml")
        for bad, message in cases:
            with pytest.raises(InvalidJobFile) as err:
                apply_alert(conn, s.rt.settings.org_id, parse_alert(bad, source="bad.yaml"))
            line = 1 + bad.splitlines().index(
                next(x for x in bad.splitlines() if x.startswith("reads:"))
            )
            assert f"bad.yaml:{line}: reads[" in str(err.value) and message in str(err.value)
        names = {r[0] for r in conn.execute("SELECT name FROM state.alert_definitions")}
    assert names == {"supply_burn", "top_account_whale"}  # nothing applied


def test_two_analytics_jobs_on_one_chain_keep_their_own_outputs(alerted: Alerted) -> None:
    """A second job on the same chain and streams, with other analytics parameters (genesis
    zero, top 1, a 100-block supply window), commits its own outputs: `--job` serves each job
    its own rows, and its versions' events route to its alerts only, pinned as its relation.
    Kept last: it adds a (paused) job the module's Dagster definitions do not know."""
    import duckdb

    from trace_core.analytics import balances, compute, supply
    from trace_core.analytics.jobs import get_analytics_job
    from trace_core.analytics.output import OutputTarget, commit_query
    from trace_core.analytics.plan import plan
    from trace_core.query.attach import task_versions
    from trace_core.query.tokens import DatasetPin, TaskClaims

    s, settings, org = alerted, alerted.rt.settings, alerted.rt.settings.org_id

    @dataclass(frozen=True)
    class PerChain(OutputTarget):
        """An output as committed before outputs were per job: one dataset per chain."""

        @property
        def dataset_key(self) -> str:
            return f"analytics_{self.name}"

    with s.rt.state() as conn, duckdb.connect() as con:
        old = PerChain(org, "demo_analytics", s.chain.chain_id, "top_accounts", 0, BLOCKS, "old")
        sql = "SELECT 1 AS rank, 'stale' AS address"
        assert commit_query(conn, s.rt.store, con, old, sql).newly_registered
    text = demo_job_text()
    for old, new in (
        ("name: demo_analytics", "name: twin"),
        ("genesis: {rpc_accounts: demo}", "genesis: {zero: true}"),
        ("top_n: 5", "top_n: 1"),
        ("supply_window_blocks: 500", "supply_window_blocks: 100"),
    ):
        assert old in text
        text = text.replace(old, new)
    twin_alert = (
        (EXAMPLES / "top_account_whale.yaml")
        .read_text()
        .replace("name: top_account_whale", "name: twin_top")
        .replace("job: demo_analytics", "job: twin")
        .replace("top_account_whale:{address}", "twin_top:{address}")
        .replace("  on_commit: true\n", "  on_commit: true\n  schedule_seconds: 60\n")
    )
    assert "schedule_seconds: 60" in twin_alert
    with s.rt.state() as conn:
        loaded = parse_job(text, source="twin.yaml")
        store.apply_job(conn, org, loaded.spec, loaded.raw, "twin.yaml")
        store.pause_job(conn, org, "twin")  # its streams are the demo job's, already synced
        apply_alert(conn, org, parse_alert(twin_alert, source="twin_top.yaml"))
        seen = {r[0] for r in conn.execute("SELECT outbox_id FROM state.outbox").fetchall()}
    with s.rt.state() as conn, duckdb.connect() as con:
        ctx = compute.Context(settings, s.rt.store, conn)
        job = get_analytics_job(conn, org, "twin")
        # its inputs are committed, its own outputs are not (as after an upgrade from
        # per-chain outputs): the planner asks for every range, under the twin's ids
        due = [(r.kind, r.start, r.end) for r in plan(conn, org, job) if r.kind != "staking_range"]
        assert due == [("balance_range", 0, 200), ("balance_range", 200, 400)]
        for a in (0, 200):
            compute.balance_range(ctx, con, job, a, a + 200)
        supply.native_supply(ctx, con, job)
        balances.top_accounts(ctx, con, job)

    cfg = settings.model_copy(update={"query_url": s.query_url})
    sql = (
        "SELECT count(*), max(block_number), CAST(arg_max(supply, block_number) AS VARCHAR) "
        "FROM analytics_native_supply"
    )
    [[demo_n, demo_end, demo_supply]] = query_http(cfg, sql, "demo_analytics")["rows"]
    [[twin_n, twin_end, twin_supply]] = query_http(cfg, sql, "twin")["rows"]
    assert (int(demo_n), int(demo_end)) == (BLOCKS, BLOCKS - 1)
    assert (int(twin_n), int(twin_end)) == (100, BLOCKS - 1)
    accounts = s.chain.rpc.call("eth_accounts")
    genesis = sum(hex_int(s.chain.rpc.call("eth_getBalance", [a, "0x0"])) for a in accounts)
    assert int(demo_supply) - int(twin_supply) == genesis  # twin counts from a zero genesis
    top = "SELECT rank, address FROM analytics_top_accounts ORDER BY rank"
    assert len(query_http(cfg, top, "demo_analytics")["rows"]) == 5
    assert query_http(cfg, top, "twin")["rows"] == [[1, WHALE]]
    everything = verify_user_token(settings, issue_user_token(settings, sub="u", datasets="all"))
    with s.rt.state() as conn:  # the stale per-chain dataset is served to no one
        assert "analytics_top_accounts" not in user_versions(conn, everything)
        assert job_dataset_key("twin", "analytics_top_accounts") in user_versions(conn, everything)

    # the twin's commits name it; routed, they create evaluations of its alert only
    with s.rt.state() as conn:
        payloads = [
            payload
            for oid, payload in conn.execute(
                "SELECT outbox_id, payload FROM state.outbox WHERE topic = %s ORDER BY created_at",
                (DATASET_EVENTS,),
            ).fetchall()
            if oid not in seen
        ]
        assert payloads and {p.get("job_name") for p in payloads} == {"twin"}
        with conn.transaction():
            created = sum(routing.route_event(conn, org, p, max_attempts=3) for p in payloads)
        evals = conn.execute(
            "SELECT payload FROM state.tasks WHERE operator = %s AND payload->>'alert_name' = %s",
            (OPERATOR, "twin_top"),
        ).fetchall()
        assert created == len(evals) == 1  # one top_accounts version; demo's alerts: none
        [grant] = evals[0][0]["grants"]
        claims = TaskClaims(
            uuid.UUID(org), uuid.uuid4(), 1, (DatasetPin.model_validate(grant),), 2**40
        )
        relations = task_versions(conn, claims)
        assert list(relations) == ["analytics_top_accounts"]
        # a scheduled evaluation pins the newest version of the twin's own output too
        assert routing.schedule_due_alerts(conn, org, max_attempts=3) == 1
        [[scheduled]] = conn.execute(
            "SELECT payload FROM state.tasks WHERE operator = %s AND payload->>'alert_name' = %s"
            " AND payload->>'trigger' = 'schedule'",
            (OPERATOR, "twin_top"),
        ).fetchall()
        assert scheduled["grants"] == [grant]
        twin_top = [p for p in payloads if p["dataset_version"] == grant["dataset_version"]]
        assert [p["dataset_key"] for p in twin_top] == [
            job_dataset_key("twin", "analytics_top_accounts")
        ]
