"""Analytics pure parts: concentration metrics, the analytics: block's validation, genesis."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest

from trace_core.analytics.genesis import parse_alloc
from trace_core.analytics.metrics import concentration_rows, hhi, nakamoto, to_decimal, top_share
from trace_core.chain_sync.yamlload import parse_job
from trace_core.errors import ConfigError, InvalidJobFile

BASE = """kind: chain_sync
name: j
chain_id: 143
mode: {kind: fixed_target, from_block: 0, to_block: 100}
streams:
  diffs: {cryo_dataset_name: geth_balance_diffs, rpc_pool: p, chunk_size: 10, max_inflight: 1}
  logs: {cryo_dataset_name: logs, rpc_pool: p, chunk_size: 10, max_inflight: 1}
"""


def test_metrics_are_exact() -> None:
    stakes = [5 * 10**27, 3 * 10**27, 2 * 10**27, 1]
    total = sum(stakes)
    assert hhi(stakes) == Fraction(sum(s * s for s in stakes), total * total)
    assert nakamoto(stakes) == 1  # 5e27 of ~1e28 is more than a third
    assert nakamoto([1, 1, 1]) == 2  # exactly a third is not more than a third
    assert nakamoto([]) == 0 and hhi([]) == 0 and top_share([], 3) == 0
    assert top_share(stakes, 2) == Fraction(8 * 10**27, total)
    assert to_decimal(Fraction(1, 3)) == Decimal("0.333333333333333333")
    assert to_decimal(Fraction(2, 3)) == Decimal("0.666666666666666667")
    table = concentration_rows({9: {1: 10, 2: 30, 3: 0}, 4: {1: 1}}, [1, 2])
    rows = table.to_pylist()
    assert [r["block_number"] for r in rows] == [4, 9]
    assert rows[1]["validators"] == 2 and rows[1]["total_stake"] == Decimal(40)
    assert rows[1]["hhi"] == to_decimal(Fraction(100 + 900, 1600))
    assert rows[1]["top1_share"] == Decimal("0.750000000000000000")
    assert rows[1]["top2_share"] == Decimal("1.000000000000000000")
    assert str(table.schema.field("hhi").type) == "decimal128(38, 18)"


def _parse(extra: str) -> object:
    spec, _ = parse_job((BASE + extra).encode(), source="job.yaml")
    return spec


def test_analytics_block_validates_streams_and_names_problems() -> None:
    spec = _parse(
        "analytics:\n  balance_diffs: diffs\n  genesis: {zero: true}\n"
        "  staking: {logs: logs, address: '0x0000000000000000000000000000000000001000'}\n"
    )
    assert spec.analytics.staking.address == "0x" + "0" * 36 + "1000"  # type: ignore[attr-defined]
    cases = {
        "analytics:\n  balance_diffs: diffs\n  genesis: {zero: true}\n  staking: {logs: logs}\n": (
            "job.yaml:11: analytics.staking.address: field required"
        ),
        "analytics:\n  balance_diffs: nope\n  genesis: {zero: true}\n": "which this job does not have",
        "analytics:\n  balance_diffs: logs\n  genesis: {zero: true}\n": "is cryo 'logs', needs one of",
        "analytics:\n  balance_diffs: diffs\n": "balance_diffs needs genesis",
        "analytics:\n  balance_diffs: diffs\n  genesis: {zero: true, rpc_accounts: p}\n": (
            "set exactly one of"
        ),
        "analytics:\n  staking: {logs: logs, address: '0x12'}\n": "20-byte hex address",
    }
    for extra, message in cases.items():
        with pytest.raises(InvalidJobFile) as err:
            _parse(extra)
        assert message in str(err.value), (extra, str(err.value))
    with pytest.raises(InvalidJobFile, match="from_block 0"):
        parse_job(
            (BASE + "analytics:\n  balance_diffs: diffs\n  genesis: {zero: true}\n")
            .replace("from_block: 0", "from_block: 5")
            .encode(),
            source="job.yaml",
        )


def test_genesis_alloc_parsing() -> None:
    alloc = parse_alloc(
        {"alloc": {"AB" * 20: {"balance": "0x10"}, "0x" + "cd" * 20: "10000000000000000000000"}},
        source="g.json",
    )
    assert alloc == {"0x" + "ab" * 20: 16, "0x" + "cd" * 20: 10**22}
    with pytest.raises(ConfigError, match="g.json: '0xzz' is not a 20-byte hex address"):
        parse_alloc({"0x" + "ab" * 20: 1, "0xzz": 2}, source="g.json")
    with pytest.raises(ConfigError, match="must be an integer"):
        parse_alloc({"0x" + "ab" * 20: 1.5}, source="g.json")


def test_example_jobs_with_analytics_validate() -> None:
    from trace_core.chain_sync.yamlload import load_job_file
    from trace_core.settings import REPO_ROOT

    for name, logs in (
        ("chain_sync.monad_mainnet_analytics.yaml", "staking_logs"),
        ("chain_sync.demo_analytics.yaml", "logs"),
    ):
        spec, _ = load_job_file(REPO_ROOT / "examples" / name)
        assert spec.analytics is not None and spec.analytics.staking is not None
        assert spec.analytics.staking.logs == logs
        assert spec.analytics.staking.address == "0x" + "0" * 36 + "1000"


def test_each_job_has_its_own_output_datasets_and_old_shared_ones_are_not_served() -> None:
    """Outputs are per job: distinct job names (even `a-b` and `a_b`, or 64 characters long)
    get distinct dataset keys that fit the 64-character slug and map back to the relation
    name; the per-chain `analytics_<name>` datasets of before are hidden from user queries."""
    import uuid
    from datetime import UTC, datetime

    from trace_core.chain_sync.analytics_spec import (
        BALANCE_OUTPUTS,
        STAKING_OUTPUTS,
        job_dataset_key,
        output_relation,
    )
    from trace_core.datasets.ids import dataset_uuid
    from trace_core.datasets.registry import VersionRecord
    from trace_core.query.attach import default_relations

    jobs = ["a-b", "a_b", "x" * 64, "x" * 63 + "y"]
    for name in BALANCE_OUTPUTS + STAKING_OUTPUTS:
        relation = f"analytics_{name}"
        keys = {job_dataset_key(j, relation) for j in jobs}
        assert len(keys) == len(jobs)
        for key in keys:
            dataset_uuid("00000000-0000-0000-0000-000000000001", 1, key)  # a valid slug
            assert output_relation(key) == relation
    assert job_dataset_key("a-b", "logs") == output_relation("logs") == "logs"

    def rec(key: str) -> VersionRecord:
        return VersionRecord(
            uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), key, 1, 0, 10, "c", "s", "p/", "p/m",
            1, 1, 1, None, None, datetime.now(UTC),
        )  # fmt: skip

    mine = job_dataset_key("a-b", "analytics_native_supply")
    relations = default_relations([rec("analytics_native_supply"), rec(mine), rec("logs")])
    assert sorted(relations) == sorted(["logs", mine])


def test_supply_block_validates_monad_rules() -> None:
    """``charge: gas_limit`` needs a transactions stream of cryo transactions; reward changes
    are in block order; the schedule starts at block 1."""
    head = BASE + (
        "  blocks: {cryo_dataset_name: blocks, rpc_pool: p, chunk_size: 10, max_inflight: 1}\n"
        "  txs: {cryo_dataset_name: transactions, rpc_pool: p, chunk_size: 10, max_inflight: 1}\n"
        "analytics:\n  balance_diffs: diffs\n  genesis: {zero: true}\n  supply: "
    )
    ok = "{blocks: blocks, transactions: txs, charge: gas_limit}"
    parsed = parse_job((head + ok + "\n").encode(), source="job.yaml").spec
    assert parsed.analytics.supply.charge == "gas_limit"  # type: ignore[union-attr]
    cases = {
        "{blocks: logs}": "is cryo 'logs', needs one of blocks",
        "{blocks: blocks, charge: gas_limit}": "charge: gas_limit needs transactions",
        "{blocks: blocks, transactions: logs}": "needs one of transactions",
        "{blocks: blocks, reward_changes: [{from_block: 9, block_reward_wei: 1},"
        " {from_block: 5, block_reward_wei: 2}]}": "increasing from_block",
        "{blocks: blocks, burn_addresses: ['0x12']}": "20-byte hex address",
    }
    for supply, message in cases.items():
        with pytest.raises(InvalidJobFile) as err:
            parse_job((head + supply + "\n").encode(), source="job.yaml")
        assert message in str(err.value), (supply, str(err.value))
    from trace_core.chain_sync.analytics_spec import SupplySpec

    spec = SupplySpec.model_validate(
        {
            "blocks": "b",
            "block_reward_wei": 25,
            "reward_changes": [{"from_block": 7, "block_reward_wei": 18}],
        },
        strict=False,
    )
    assert spec.reward_schedule() == [(1, 25), (7, 18)]


def test_stable_points_keep_earlier_picks_as_ranges_are_added() -> None:
    """Thinned points of a longer history, before any earlier end, are a subset of the points
    of that shorter history (what the folding roll-ups reuse); the last end is always kept."""
    from trace_core.analytics.fold import stable_points

    ends = list(range(99, 100 * 300, 100))
    for limit in (2, 3, 7, 50):
        for n in range(1, len(ends)):
            short, long = stable_points(ends[:n], limit), stable_points(ends[: n + 37], limit)
            assert len(long) <= limit and long[-1] == ends[min(n + 36, len(ends) - 1)]
            assert {p for p in long if p <= ends[n - 1]} <= set(short), (limit, n)
    assert stable_points([5, 9], 4) == [5, 9]


def test_monad_shape_rewards() -> None:
    from trace_core.analytics.compute import STAKING_TOPICS
    from trace_lite.devtools.devmonad import MON, MonadShape, reward_transaction

    shape = MonadShape(reward_changes={10: 18 * MON}, mint_overrides={12: 1})
    assert [shape.reward_at(b) for b in (0, 1, 9, 10, 12)] == [
        0,
        25 * MON,
        25 * MON,
        18 * MON,
        18 * MON,
    ]
    assert shape.minted_at(12) == 1 and shape.minted_at(11) == 18 * MON
    tx = reward_transaction(shape, 10)
    assert tx["mint"] == tx["value"] == hex(18 * MON)
    data = bytes.fromhex(str(tx["data"])[2:])
    assert data[:32].hex() == STAKING_TOPICS["validator_rewarded"]
    assert int.from_bytes(data[96:128], "big") == 18 * MON
