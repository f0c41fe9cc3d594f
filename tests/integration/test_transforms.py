"""Transform jobs and Python alerts end to end on real parts: logs synced by real cryo from the
shared anvil chain into embedded Postgres + a local store, transform runs routed from each
committed range, inputs read through the in-process Query Service, the UDF run in the real
bubblewrap sandbox, outputs committed with ``commit_version``.

Covers: one committed output version per input range whose values match the synced logs; a
retried run (first attempt staged, then died) commits one version and the stale attempt's
commit changes nothing; a UDF returning the wrong shape is dead after one attempt and commits
nothing; a SQL transform; a Python alert over a transform's output fires once per matching row
and its events are deduplicated; the Dagster asset of a transform sits downstream of its
input stream and materializing one partition runs it.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, Definitions, instance_for_test, materialize

from trace_core.alerts.spec import load_alert_file
from trace_core.alerts.store import apply_alert
from trace_core.chain_sync import store as chain_sync_store
from trace_core.chain_sync.planner import range_partition_key
from trace_core.chain_sync.yamlload import load_job_file
from trace_core.datasets import registry
from trace_core.db.migrate import migrate
from trace_core.engine.dispatcher import dispatch_tick
from trace_core.engine.execute import TaskOutcome, capability_token_for, execute_task
from trace_core.errors import StaleAttempt
from trace_core.operators.base import OperatorContext
from trace_core.query.client import local_user_token
from trace_core.query.service import QueryRequest, QueryService
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_core.sinks.consumer import sink_once
from trace_core.tasks import lifecycle
from trace_core.transforms.operator import udf_transform_operator
from trace_core.transforms.spec import load_transform_file, parse_transform
from trace_core.transforms.status import transform_status
from trace_core.transforms.store import apply_transform
from trace_core.transforms.tasks import OPERATOR
from trace_core.udf.bundles import put_bundle
from trace_dagster.definitions import build_definitions
from trace_dagster.partitions import partitions_def_name, stream_asset_key
from trace_dagster.resources import TraceResource
from trace_dagster.transforms import transform_asset_key, transform_definitions
from trace_lite.devtools.devchain import DevChain

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TRANSFER = "DDF252AD1BE2C89B69C2B068FC378DAA952BA7F163C4A11628F55A4DF523B3EF"
JOB = """kind: chain_sync
name: demo
chain_id: {chain_id}
mode: {{kind: fixed_target, from_block: 0, to_block: 400}}
streams:
  logs: {{cryo_dataset_name: logs, rpc_pool: tf, chunk_size: 200, max_inflight: 2}}
"""


def queued(rt: Runtime) -> list[tuple[uuid.UUID, str]]:
    with rt.state() as conn:
        rows = conn.execute(
            "SELECT task_id, operator FROM state.tasks WHERE status = 'queued' ORDER BY task_id"
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def run_until_idle(rt: Runtime, *, hold: str | None = None) -> list[TaskOutcome]:
    """Dispatcher ticks + execute_task on every queued task (except operator ``hold``)."""
    outcomes: list[TaskOutcome] = []
    for _ in range(30):
        dispatch_tick(rt)
        todo = [t for t, op in queued(rt) if op != hold]
        if not todo:
            return outcomes
        outcomes += [execute_task(rt, t) for t in todo]
    raise AssertionError("tasks kept coming")


@pytest.fixture
def rt(
    trace_env: Runtime, anvil_chain: DevChain, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Runtime:
    """The demo job's logs over [0, 400) in two ranges, plus the erc20_volume example applied."""
    monkeypatch.setenv("TRACE_RPC_POOL_TF_URL", anvil_chain.rpc_url)
    rt = Runtime(load_settings())
    migrate(rt.dbs)
    job_file = tmp_path / "demo.yaml"
    job_file.write_text(JOB.format(chain_id=anvil_chain.chain_id))
    spec, raw = load_job_file(job_file)
    with rt.state() as conn:
        chain_sync_store.apply_job(conn, rt.settings.org_id, spec, raw, str(job_file))
    apply_transform(rt, load_transform_file(EXAMPLES / "transforms" / "erc20_volume.yaml"))
    return rt


def versions(rt: Runtime, key: str) -> list[registry.VersionRecord]:
    with rt.state() as conn:
        return registry.versions_for_stream(conn, rt.settings.org_id, 31337, key)


def sql(rt: Runtime, text: str) -> list[list[Any]]:
    """A user query through the in-process Query Service (one service per test run)."""
    global _service
    if _service is None:
        _service = QueryService(rt.settings, rt.dbs, rt.store, hot_sources=None)
        _service.open()
    rows: list[list[Any]] = _service.query(
        "user", local_user_token(rt.settings), QueryRequest(sql=text, max_rows=None)
    )["rows"]
    return rows


_service: QueryService | None = None


@pytest.fixture(autouse=True)
def _close_service() -> Any:
    yield
    global _service
    if _service is not None:
        _service.close()
        _service = None


def test_transform_commits_one_version_per_range_even_when_retried(
    rt: Runtime, tmp_path: Path
) -> None:
    (tmp_path / "broken.py").write_text("def main(tables):\n    return [1, 2]\n")
    for name, inputs, code in (
        ("broken", "logs", "{python: broken.py}"),
        ("by_address", "logs", "{sql: 'SELECT address, count(*) AS n FROM logs GROUP BY 1'}"),
        (
            "per_token",
            "erc20_volume",
            "{sql: 'SELECT token, sum(transfers) AS n FROM erc20_volume GROUP BY 1'}",
        ),
    ):
        text = (
            f"kind: transform\nname: {name}\njob: demo\ninputs: [{inputs}]\n"
            f"output: {name}_out\ncode: {code}\n"
        )
        apply_transform(rt, parse_transform(text, source=f"{name}.yaml", base=tmp_path))

    run_until_idle(rt, hold=OPERATOR)  # logs synced; the transform runs wait
    assert [(v.range_start, v.range_end) for v in versions(rt, "logs")] == [(0, 200), (200, 400)]
    held = [t for t, op in queued(rt) if op == OPERATOR]
    assert len(held) == 6  # 3 transforms x 2 ranges, one task each

    # attempt 1 of one erc20_volume run stages its output, then its worker dies
    with rt.state() as conn:
        names = dict(
            conn.execute(
                "SELECT task_id, payload->>'transform_name' FROM state.tasks WHERE operator = %s",
                (OPERATOR,),
            ).fetchall()
        )
    first = next(t for t in held if names[t] == "erc20_volume")
    with rt.state() as conn, conn.transaction():
        lease = lifecycle.claim(conn, first, lease_seconds=30)
    ctx = OperatorContext(rt, lease, threading.Event(), capability_token_for(rt, lease))
    stale = udf_transform_operator(ctx)
    with rt.state() as conn, conn.transaction():
        lifecycle.complete_failure(
            conn, lease, error="worker died", fatal=False, policy=rt.retry_policy
        )

    outcomes = {o.task_id: o for o in run_until_idle(rt)}
    assert outcomes[first].status == "succeeded" and outcomes[first].attempt == 2
    with rt.state() as conn, pytest.raises(StaleAttempt):
        assert stale.commit is not None
        stale.commit(conn)  # the dead attempt's staged output is never promoted

    out = versions(rt, "erc20_volume")
    assert [(v.range_start, v.range_end) for v in out] == [(0, 200), (200, 400)]
    assert len({v.dataset_version for v in out}) == 2
    with rt.state() as conn:
        registered = conn.execute(
            "SELECT attempt FROM state.dataset_versions WHERE task_id = %s", (first,)
        ).fetchall()
    assert registered == [(2,)]

    # the output matches the synced logs, range by range
    for v in out:
        expected = sql(
            rt,
            f"SELECT count(*) FROM logs WHERE hex(topic0) = '{TRANSFER}' "
            f"AND block_number >= {v.range_start} AND block_number < {v.range_end}",
        )[0][0]
        assert expected > 0
        got = sql(
            rt,
            f"SELECT sum(transfers) FROM erc20_volume WHERE first_block >= {v.range_start} "
            f"AND first_block < {v.range_end}",
        )[0][0]
        assert int(got) == expected

    # a UDF's own bug: dead after one attempt, nothing committed
    broken = [outcomes[t] for t in held if names[t] == "broken"]
    assert [(o.status, o.attempt) for o in broken] == [("dead", 1), ("dead", 1)]
    assert all(
        "wrong_shape" in (o.error or "") or "pyarrow.Table" in (o.error or "") for o in broken
    )
    assert versions(rt, "broken_out") == []
    # a SQL transform: its output is the gated SELECT over the pinned range
    assert len(versions(rt, "by_address_out")) == 2
    total = sql(rt, "SELECT sum(n) FROM by_address_out")[0][0]
    assert int(total) == sql(rt, "SELECT count(*) FROM logs")[0][0]
    # a transform over another transform's output runs when that output commits
    chained = versions(rt, "per_token_out")
    assert [(v.range_start, v.range_end) for v in chained] == [(0, 200), (200, 400)]
    assert (
        sql(rt, "SELECT sum(n) FROM per_token_out")[0][0]
        == sql(rt, "SELECT sum(transfers) FROM erc20_volume")[0][0]
    )
    # `trace-lite status` shows each transform's runs by state and the dead runs' error
    with rt.state() as conn:
        status = {t["name"]: t for t in transform_status(conn, rt.settings.org_id)}
    assert {n: t["runs"]["succeeded"] for n, t in status.items()} == {
        "broken": 0,
        "by_address": 2,
        "erc20_volume": 2,
        "per_token": 2,
    }
    assert (
        status["broken"]["runs"]["dead"] == 2 and "pyarrow.Table" in status["broken"]["last_error"]
    )
    assert status["per_token"]["last_error"] is None and status["per_token"]["last_finished_at"]


def test_python_alert_over_a_transform_fires_and_asset_is_downstream(rt: Runtime) -> None:
    loaded = load_alert_file(EXAMPLES / "udf_alerts" / "busy_token.yaml")
    with rt.state() as conn:
        apply_alert(conn, rt.settings.org_id, loaded, bundles=lambda source: put_bundle(rt, source))
    outcomes = run_until_idle(rt)
    assert {o.status for o in outcomes} == {"succeeded"}
    assert sum(o.operator == "alert_evaluate" for o in outcomes) == 2
    while not sink_once(rt).idle:
        pass
    busy = sql(rt, "SELECT token, first_block, transfers FROM erc20_volume WHERE transfers >= 20")
    assert busy
    with rt.data() as conn:
        events = conn.execute(
            "SELECT dedupe_key, payload FROM data.alert_events WHERE alert_name = 'busy_token' "
            "ORDER BY dedupe_key"
        ).fetchall()
    assert sorted(k for k, _ in events) == sorted(f"busy_token:{t}:{b}" for t, b, _ in busy)
    assert all(p["row"]["transfers"] >= 20 for _, p in events)

    # Dagster: the output asset depends on the logs stream and shares its partitions
    assets, schedules = transform_definitions(rt)
    (asset,) = assets
    key = transform_asset_key("demo", "erc20_volume")
    assert asset.key == key and schedules == []
    assert asset.asset_deps[key] == {stream_asset_key("demo", "logs")}
    with instance_for_test() as instance:
        epoch = range_partition_key(0, 100_000)  # the logs stream's epoch
        instance.add_dynamic_partitions(partitions_def_name("demo", "logs"), [epoch])
        result = materialize(
            [asset],
            partition_key=epoch,
            instance=instance,
            resources={"trace": TraceResource(home=str(rt.settings.home))},
        )
        assert result.success
        mats = result.asset_materializations_for_node(asset.node_def.name)
        assert mats and mats[0].asset_key == AssetKey(["transform", "demo", "erc20_volume"])
    assert len(versions(rt, "erc20_volume")) == 2  # the partition was already committed
    Definitions.validate_loadable(build_definitions(rt))  # shared partitions with the stream
