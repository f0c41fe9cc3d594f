"""Analytics (Monad demos 2-4) end to end: a real archive anvil chain with staking events,
chain_sync through Dagster with real cryo (geth_balance_diffs, logs), then the analytics
assets materialized with dagster-duckdb, checked against eth_getBalance and eth_getLogs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster import AssetsDefinition, DagsterInstance, Definitions, instance_for_test, materialize

from tests.conftest import clone_databases, drop_databases
from trace_core.analytics import compute
from trace_core.analytics.jobs import get_analytics_job
from trace_core.chain_sync import store
from trace_core.chain_sync.analytics_spec import job_dataset_key
from trace_core.chain_sync.planner import range_partition_key
from trace_core.chain_sync.yamlload import load_job_file
from trace_core.datasets import registry
from trace_core.errors import DatasetNotSynced, InvalidJobFile
from trace_core.rpc.client import hex_int
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_dagster.analytics import analytics_asset_key
from trace_dagster.definitions import build_definitions
from trace_dagster.driver import drive_until_idle
from trace_lite.devtools import devstaking
from trace_lite.devtools.devchain import DevChain

BLOCKS = 600
CHUNK = 200
JOB = """kind: chain_sync
name: ana
chain_id: {chain_id}
mode: {{kind: fixed_target, from_block: 0, to_block: {blocks}}}
streams:
  geth_balance_diffs: {{cryo_dataset_name: geth_balance_diffs, rpc_pool: ana, chunk_size: {chunk}, max_inflight: 3}}
  logs: {{cryo_dataset_name: logs, rpc_pool: ana, chunk_size: {chunk}, max_inflight: 3}}
  blocks: {{cryo_dataset_name: blocks, rpc_pool: ana, chunk_size: {chunk}, max_inflight: 3}}
analytics:
  balance_diffs: geth_balance_diffs
  genesis: {{rpc_accounts: ana}}
  top_n: 5
  supply_window_blocks: 250
  staking:
    logs: logs
    address: "0x0000000000000000000000000000000000001000"
    top_k: [1, 3]
  supply: {{blocks: blocks}}
"""


def key_of(relation: str) -> str:
    """Dataset key of the ana job's analytics output ``relation`` (outputs are per job)."""
    return job_dataset_key("ana", relation)


ENV = {"TRACE_RETRY_BASE_SECONDS": "0", "TRACE_HEARTBEAT_SECONDS": "1"}


@dataclass
class Synced:
    rt: Runtime
    chain: DevChain
    activity: devstaking.StakingActivity
    instance: DagsterInstance
    defs: Definitions


@pytest.fixture(scope="module")
def synced(
    pg_server_url: str, template_dbs: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Synced]:
    dbs = clone_databases(pg_server_url)
    home = tmp_path_factory.mktemp("ana_home")
    with (
        pytest.MonkeyPatch.context() as mp,
        DevChain.start(blocks=300, seed=3, archive=True) as chain,
        instance_for_test() as instance,
    ):
        activity = devstaking.drive(chain, validators=4, actions=24)
        chain.seed(BLOCKS, seed=5)  # more transfers after the staking activity
        for k, v in {
            **ENV,
            "TRACE_HOME": str(home),
            "TRACE_STATE_URL": dbs.state_url,
            "TRACE_DATA_URL": dbs.data_url,
            "TRACE_RPC_POOL_ANA_URL": chain.rpc_url,
        }.items():
            mp.setenv(k, v)
        rt = Runtime(load_settings())
        job_file = home / "ana.yaml"
        job_file.write_text(JOB.format(chain_id=chain.chain_id, blocks=BLOCKS, chunk=CHUNK))
        spec, raw = load_job_file(job_file)
        from trace_core.db.migrate import migrate

        migrate(rt.dbs)
        with rt.state() as conn:
            store.apply_job(conn, rt.settings.org_id, spec, raw, str(job_file))
        defs = build_definitions(rt)
        report = drive_until_idle(rt, defs, instance, timeout=300)
        assert report.idle and report.dead_tasks == 0 and report.failed_runs == 0, report
        # the trace_analytics sensor materialized every range and the roll-ups on its own
        with rt.state() as conn:
            for name in ("native_supply", "top_accounts", "staking_concentration"):
                (version,) = registry.versions_for_stream(
                    conn, rt.settings.org_id, chain.chain_id, key_of(f"analytics_{name}")
                )
                assert (version.range_start, version.range_end) == (0, BLOCKS)
        for name in ("balance_changes", "staking_events"):
            # one run per input range, on the range's epoch partition (here one epoch)
            key = analytics_asset_key("ana", name)
            assert instance.get_materialized_partitions(key) == {range_partition_key(0, 100_000)}
            recs = instance.fetch_materializations(key, limit=100).records
            assert sorted(str(r.asset_materialization.metadata["ranges"].value) for r in recs) == [  # type: ignore[union-attr]
                range_partition_key(a, a + CHUNK) for a in range(0, BLOCKS, CHUNK)
            ]
        try:
            yield Synced(rt, chain, activity, instance, defs)
        finally:
            rt.close()
    drop_databases(pg_server_url, dbs)


def _assets(s: Synced) -> list[AssetsDefinition]:
    return [a for a in s.defs.assets or [] if isinstance(a, AssetsDefinition)]


def _materialize(s: Synced, name: str, partition: str | None = None) -> Any:
    key = analytics_asset_key("ana", name)
    assets = [a for a in _assets(s) if key in a.keys]
    assert assets, f"no asset {key}"
    res = materialize(
        assets,
        instance=s.instance,
        partition_key=partition,
        resources=dict(s.defs.resources or {}),
    )
    assert res.success
    return res


def _materialize_all(s: Synced) -> None:
    epoch = range_partition_key(0, 100_000)  # launched from the UI: every range of the epoch
    _materialize(s, "balance_changes", epoch)
    _materialize(s, "staking_events", epoch)
    for name in ("native_supply", "top_accounts", "staking_concentration"):
        _materialize(s, name)


def _read(s: Synced, dataset: str) -> list[dict[str, Any]]:
    """Rows of the newest committed version(s) of an analytics output, via its manifest."""
    from trace_core.analytics.inputs import stream_input

    with s.rt.state() as conn:
        versions = registry.versions_for_stream(
            conn, s.rt.settings.org_id, s.chain.chain_id, key_of(dataset)
        )
        end = max(v.range_end for v in versions)
        inp = stream_input(
            conn, s.rt.store, org_id=s.rt.settings.org_id, job="ana", stream=dataset,
            chain_id=s.chain.chain_id, start=0, end=end, dataset_key=key_of(dataset),
        )  # fmt: skip
    return duckdb.sql(inp.select_sql()).arrow().read_all().to_pylist()


def _balance(chain: DevChain, address: str, block: int) -> int:
    return hex_int(chain.rpc.call("eth_getBalance", [address, hex(block)]))


def test_supply_top_accounts_and_staking_match_the_chain(synced: Synced) -> None:
    s, chain = synced, synced.chain
    _materialize_all(s)

    # demo 2: supply at every block of the window = sum of eth_getBalance over all accounts
    supply = {r["block_number"]: int(r["supply"]) for r in _read(s, "analytics_native_supply")}
    assert sorted(supply) == list(range(BLOCKS - 250, BLOCKS))
    changes = _read(s, "analytics_balance_changes")
    accounts = sorted(
        {r["address"] for r in changes} | {a.lower() for a in chain.rpc.call("eth_accounts")}
    )
    for block in (BLOCKS - 250, 450, BLOCKS - 1):
        assert supply[block] == sum(_balance(chain, a, block) for a in accounts), block
    genesis = sum(_balance(chain, a, 0) for a in accounts)
    assert supply[BLOCKS - 1] < genesis  # fees were burnt; exact integers, not floats

    # demo 3: top 5 accounts now, and each one's balance at every range end
    top = _read(s, "analytics_top_accounts")
    assert [r["rank"] for r in top] == [1, 2, 3, 4, 5]
    now = {a: _balance(chain, a, BLOCKS - 1) for a in accounts}
    expected = sorted(now.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    assert [(r["address"], int(r["balance"])) for r in top] == expected
    history = _read(s, "analytics_top_account_history")
    assert sorted({r["block_number"] for r in history}) == [199, 399, 599]
    for r in history:
        assert int(r["balance"]) == _balance(chain, r["address"], r["block_number"])

    # demo 4: stake per validator from the precompile's logs, decoded independently
    logs = chain.rpc.call(
        "eth_getLogs",
        [{"fromBlock": "0x0", "toBlock": hex(BLOCKS - 1), "address": s.activity.address}],
    )
    stake: dict[tuple[int, str], int] = {}
    for log in logs:
        topic0, v, who = (
            log["topics"][0][2:],
            int(log["topics"][1], 16),
            "0x" + log["topics"][2][-40:],
        )
        words = [
            int(log["data"][2 + 64 * i : 66 + 64 * i], 16)
            for i in range(len(log["data"][2:]) // 64)
        ]
        sign = {
            compute.STAKING_TOPICS["delegate"]: (1, 0),
            compute.STAKING_TOPICS["undelegate"]: (-1, 1),
        }
        if topic0 in sign:
            k, idx = sign[topic0]
            stake[(v, who)] = stake.get((v, who), 0) + k * words[idx]
    per_validator: dict[int, int] = {}
    delegators: dict[int, int] = {}
    for (v, _), amount in stake.items():
        if amount > 0:
            per_validator[v] = per_validator.get(v, 0) + amount
            delegators[v] = delegators.get(v, 0) + 1
    last = max(r["block_number"] for r in _read(s, "analytics_validator_stake"))
    got = {
        r["validator_id"]: (int(r["stake"]), r["delegators"])
        for r in _read(s, "analytics_validator_stake")
        if r["block_number"] == last
    }
    assert got == {v: (per_validator[v], delegators[v]) for v in per_validator}
    conc = _read(s, "analytics_staking_concentration")[-1]
    total = sum(per_validator.values())
    assert int(conc["total_stake"]) == total
    from fractions import Fraction

    from trace_core.analytics.metrics import to_decimal

    assert conc["hhi"] == to_decimal(
        Fraction(sum(x * x for x in per_validator.values()), total * total)
    )
    assert conc["top1_share"] == to_decimal(Fraction(max(per_validator.values()), total))

    # the Query Service reads the outputs like any dataset, exact decimals included
    from tests.integration.test_query_service import post, serving
    from trace_core.query.app import create_app
    from trace_core.query.client import local_user_token

    sql = "SELECT block_number, supply FROM analytics_native_supply ORDER BY block_number DESC LIMIT 1"
    with serving(create_app(s.rt.settings, s.rt.dbs, s.rt.store, hot_sources=None)) as client:
        body = post(client, local_user_token(s.rt.settings), {"sql": sql, "job": "ana"}).json()
    assert [int(v) for v in body["rows"][0]] == [BLOCKS - 1, supply[BLOCKS - 1]]

    # the asset checks ran and passed (chain cross-checks)
    for asset, check in (
        ("native_supply", "supply_matches_chain"),
        ("top_account_history", "top_accounts_match_chain"),
        ("staking_concentration", "stake_is_consistent"),
    ):
        rec = s.instance.event_log_storage.get_latest_asset_check_execution_by_key(  # type: ignore[attr-defined]
            [__import__("dagster").AssetCheckKey(analytics_asset_key("ana", asset), check)]
        )
        (execution,) = rec.values()
        assert execution.status.value == "SUCCEEDED", (asset, check)


def test_rematerializing_is_idempotent_and_lineage_points_at_streams(synced: Synced) -> None:
    s = synced
    _materialize_all(s)
    with s.rt.state() as conn:
        before = conn.execute("SELECT count(*) FROM state.dataset_versions").fetchone()
    _materialize_all(s)
    with s.rt.state() as conn:
        after = conn.execute("SELECT count(*) FROM state.dataset_versions").fetchone()
    assert before == after
    graph = s.defs.resolve_asset_graph()
    deps = graph.get(analytics_asset_key("ana", "balance_changes")).parent_keys
    assert [k.path for k in deps] == [["chain_sync", "ana", "geth_balance_diffs"]]
    deps = graph.get(analytics_asset_key("ana", "staking_events")).parent_keys
    assert [k.path for k in deps] == [["chain_sync", "ana", "logs"]]
    # every analytics job runs in the run's process (no subprocess per step)
    analytics = [j for j in s.defs.jobs or [] if j.name.startswith("analytics__")]
    assert analytics and all(
        s.defs.resolve_job_def(j.name).executor_def.name == "in_process" for j in analytics
    )


def test_a_range_that_is_not_synced_is_named(synced: Synced) -> None:
    s = synced
    with s.rt.state() as conn, duckdb.connect() as con:
        job = get_analytics_job(conn, s.rt.settings.org_id, "ana")
        ctx = compute.Context(s.rt.settings, s.rt.store, conn)
        with pytest.raises(
            DatasetNotSynced,
            match=r"stream 'geth_balance_diffs' is not synced for blocks \[600, 800\)",
        ):
            compute.balance_range(ctx, con, job, 600, 800)


def test_a_missing_staking_address_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        JOB.format(chain_id=1, blocks=10, chunk=5).replace(
            '    address: "0x0000000000000000000000000000000000001000"\n', ""
        )
    )
    with pytest.raises(InvalidJobFile) as err:
        load_job_file(path)
    assert "analytics.staking.address" in str(err.value) and "field required" in str(err.value)
    assert f"{path}:" in str(err.value)


def test_geth_balance_diffs_needs_state_history(anvil_chain: DevChain, tmp_path: Path) -> None:
    """The session chain is pruned (no state at old blocks): cryo's debug_trace call fails
    there, and cryo_ingest reports it as a retryable CryoFailed instead of committing."""
    from trace_core.errors import CryoFailed
    from trace_core.operators.cryo_ingest import CryoIngestTask
    from trace_core.operators.cryo_real import extract_real
    from trace_core.rpc.pool import RpcPool
    from trace_core.settings import Settings

    payload = CryoIngestTask.parse(
        {
            "chain_id": anvil_chain.chain_id,
            "dataset_key": "geth_balance_diffs",
            "cryo_dataset_name": "geth_balance_diffs",
            "range_start": 0,
            "range_end": 100,
            "rpc_pool": "ana",
        },
        org_id="00000000-0000-0000-0000-000000000001",
    )
    settings = Settings(home=tmp_path, cryo_min_split_blocks=100)  # no splitting: one call
    pool = RpcPool.from_env("ana", settings, {"TRACE_RPC_POOL_ANA_URL": anvil_chain.rpc_url})
    with pytest.raises(CryoFailed, match="geth_balance_diffs failed on pool ana: .* refused"):
        extract_real(payload, pool, tmp_path, settings)


def test_staking_topics_are_the_keccak_of_the_signatures(synced: Synced) -> None:
    for name, signature in compute.STAKING_SIGNATURES.items():
        digest = synced.chain.rpc.call("web3_sha3", ["0x" + signature.encode().hex()])
        assert digest == "0x" + compute.STAKING_TOPICS[name], name


def test_plan_asks_only_for_the_range_whose_output_is_missing(synced: Synced) -> None:
    from trace_core.analytics.plan import plan

    s = synced
    with s.rt.state() as conn:
        job = get_analytics_job(conn, s.rt.settings.org_id, "ana")
        done = plan(conn, s.rt.settings.org_id, job)
        # everything is materialized: only the (idempotent) roll-ups are candidates
        assert sorted(r.kind for r in done) == ["balance_rollups", "staking_rollups"]
        assert all((r.start, r.end) == (0, BLOCKS) for r in done)
        with conn.transaction(force_rollback=True):
            conn.execute(
                "DELETE FROM state.dataset_versions v USING state.datasets d "
                "WHERE v.dataset_uuid = d.dataset_uuid AND d.dataset_key = %s "
                "AND v.range_start = 200",
                (key_of("analytics_supply_deltas"),),
            )
            due = plan(conn, s.rt.settings.org_id, job)
        # one partition to redo, and no balance roll-up until it is back
        assert [(r.kind, r.start, r.end) for r in due] == [
            ("balance_range", 200, 400),
            ("staking_rollups", 0, BLOCKS),
        ]


def test_a_skipped_check_is_not_reported_as_passed() -> None:
    from dagster import AssetCheckSeverity

    from trace_core.analytics.checks import CheckOutcome
    from trace_dagster.analytics import _check_result

    skipped = CheckOutcome(
        "supply_matches_chain", False, "skipped: 5000 accounts exceed 2000", skipped=True
    )
    result = _check_result("j", "native_supply", skipped)
    assert result.passed is False and result.severity == AssetCheckSeverity.WARN
    assert result.description.startswith("skipped:") and result.metadata["skipped"].value is True
    passed = _check_result("j", "native_supply", CheckOutcome("supply_matches_chain", True, "ok"))
    assert passed.passed is True and passed.metadata["skipped"].value is False


def test_native_supply_folds_new_ranges_and_equals_a_full_recompute(
    synced: Synced, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The roll-up over [0, 200) is computed from genesis; [0, 400) and [0, 600) fold the new
    ranges' deltas into the previous roll-up (reading no older delta); the result equals the
    full recompute over every delta, row for row."""
    import dataclasses

    from trace_core.analytics import supply
    from trace_core.db.queries import q

    rt = synced.rt
    with rt.state() as state, duckdb.connect() as con:
        ctx = compute.Context(rt.settings, rt.store, state)
        job = get_analytics_job(state, rt.settings.org_id, "ana")
        job = dataclasses.replace(
            job, spec=job.spec.model_copy(update={"supply_window_blocks": 350})
        )
        real_end = compute.synced_end
        steps = []
        for end in (200, 400, BLOCKS):
            monkeypatch.setattr(compute, "synced_end", lambda c, j, n, e=end: e)
            result = supply.native_supply(ctx, con, job)
            steps.append((result.summary["folded_from"], result.input_rows))
        monkeypatch.setattr(compute, "synced_end", real_end)
        deltas = compute.output_input(ctx, job, "supply_deltas", 0, BLOCKS)
        per_range = [
            compute.output_input(ctx, job, "supply_deltas", a, a + CHUNK).rows
            for a in range(0, BLOCKS, CHUNK)
        ]
        assert steps == [(None, per_range[0]), (200, per_range[1]), (400, per_range[2])]

        compute.ready(ctx, con, deltas)
        compute.view(con, "supply_deltas", deltas.select_sql())
        genesis = result.summary["genesis_supply"]
        full = con.execute(
            q("analytics_duckdb", "native_supply"),
            {"lo": BLOCKS - 350, "hi": BLOCKS, "genesis": str(genesis)},
        ).fetchall()
        folded_rec = result.outputs["native_supply"].record
        folded = con.execute(
            f"SELECT * FROM ({supply._files(ctx, folded_rec)}) ORDER BY block_number"
        ).fetchall()
        assert len(full) == 350 and folded == full
        assert result.summary["supply"] == int(full[-1][1])


def test_supply_reconciles_block_by_block_with_base_fee_burns(synced: Synced) -> None:
    """From ledger data only: every block's net supply change (balance diffs) equals the
    protocol's, reward 0 minted minus base fee * gas used burned (anvil burns EIP-1559 base
    fees, mints nothing): 0 unexplained blocks. A wrong reward leaves every later block
    unexplained, so the check can fail."""
    import dataclasses

    from trace_core.analytics import checks

    rt = synced.rt
    with rt.state() as state, duckdb.connect() as con:
        ctx = compute.Context(rt.settings, rt.store, state)
        job = get_analytics_job(state, rt.settings.org_id, "ana")
        ok = checks.supply_reconciles(ctx, con, job, compute.Result(end=BLOCKS))
        assert ok.passed and not ok.skipped, ok
        assert ok.metadata["blocks"] == BLOCKS and ok.metadata["unexplained_blocks"] == 0
        assert int(ok.metadata["burned"]) > 0 and int(ok.metadata["minted"]) == 0
        assert job.spec.supply is not None
        wrong = job.spec.model_copy(
            update={"supply": job.spec.supply.model_copy(update={"block_reward_wei": 1})}
        )
        bad = checks.supply_reconciles(
            ctx, con, dataclasses.replace(job, spec=wrong), compute.Result(end=BLOCKS)
        )
        assert not bad.passed and bad.metadata["unexplained_blocks"] == BLOCKS - 1
        assert bad.metadata["first_unexplained"] == 1
        none = checks.supply_reconciles(
            ctx,
            con,
            dataclasses.replace(job, spec=job.spec.model_copy(update={"supply": None})),
            compute.Result(end=BLOCKS),
        )
        assert none.skipped and not none.passed and none.description.startswith("skipped:")


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[Any, ...]]:
    return con.execute(sql).fetchall()


def test_top_accounts_and_staking_fold_new_ranges_and_equal_a_full_recompute(
    synced: Synced, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both roll-ups over [0, 200) are computed from scratch; [0, 400) and [0, 600) fold the
    new range into the previous roll-up (reading only its events/changes); the committed rows
    equal a full recompute's, with at most 2 points so the stable thinning drops one."""
    import dataclasses

    from trace_core.analytics import balances, fold, staking
    from trace_core.analytics.genesis import load_genesis
    from trace_core.db.queries import q

    rt = synced.rt
    monkeypatch.setattr(balances, "MAX_HISTORY_POINTS", 2)
    monkeypatch.setattr(staking, "MAX_CONCENTRATION_POINTS", 2)
    with rt.state() as state, duckdb.connect() as con:
        ctx = compute.Context(rt.settings, rt.store, state)
        job = get_analytics_job(state, rt.settings.org_id, "ana")
        # other parameters than the sensor's, so nothing is registered yet
        assert job.spec.staking is not None
        spec = job.spec.model_copy(
            update={
                "top_n": 4,
                "staking": job.spec.staking.model_copy(update={"top_k": [2]}),
            }
        )
        job = dataclasses.replace(job, spec=spec)
        steps = []
        for end in (200, 400, BLOCKS):
            monkeypatch.setattr(compute, "synced_end", lambda c, j, n, e=end: e)
            top = balances.top_accounts(ctx, con, job)
            stake = staking.staking_concentration(ctx, con, job)
            steps.append((top.summary["folded_from"], stake.summary["folded_from"]))
            if end > CHUNK:  # a fold reads the new range's events only
                new = compute.output_input(ctx, job, "staking_events", end - CHUNK, end).rows
                assert stake.input_rows == new
        assert steps == [(None, None), (200, 200), (400, 400)]

        folded = {
            name: _rows(con, f"SELECT * FROM ({fold.files(ctx, v.record)})")
            for name, v in {**top.outputs, **stake.outputs}.items()
        }
        alloc = load_genesis(job, ctx.settings, ctx.environ)
        _, points = balances.links_and_points(ctx, job, BLOCKS, alloc)
        assert points == [199, BLOCKS - 1]
        balances.build(ctx, con, job, BLOCKS, points, None, 0)
        full_top = {
            "account_balances": con.execute(
                q("analytics_duckdb", "account_balances"), {"as_of": BLOCKS - 1}
            ).fetchall(),
            "top_accounts": _rows(con, "SELECT * FROM top_accounts ORDER BY rank"),
            "top_account_history": _rows(con, "SELECT * FROM history ORDER BY block_number, rank"),
        }
        _, spoints = staking.links_and_points(ctx, job, BLOCKS)
        _, stakes = staking.build(ctx, con, job, BLOCKS, spoints, None, 0)
        full_stake = {
            "delegator_stake": _rows(
                con, "SELECT * FROM delegators ORDER BY validator_id, delegator"
            ),
            "validator_stake": _rows(
                con, "SELECT * FROM validator_stake ORDER BY block_number, validator_id"
            ),
        }
        for name, rows in {**full_top, **full_stake}.items():
            assert rows and folded[name] == rows, name
        assert len({r[0] for r in folded["top_account_history"]}) == 2
        assert folded["staking_concentration"][-1][0] == BLOCKS - 1
        assert stake.summary["validators"] == stakes[BLOCKS - 1]
