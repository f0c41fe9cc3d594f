"""Sources on real Postgres: a signed webhook to the Query Service app under a real uvicorn,
``trace-lite trigger`` (manual), and a transform's cron schedule through Dagster's harness.

Each path writes source event + task + outbox row in one transaction; a repeated delivery,
a double click or a tick evaluated twice makes no second run; every refusal (bad signature,
oversized body, missing or reused key, unknown job, trigger not enabled) writes nothing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from dagster import build_schedule_context, instance_for_test

from tests.integration.test_query_service import publish, serving
from trace_core.chain_sync import store as chain_sync_store
from trace_core.chain_sync.yamlload import parse_job
from trace_core.cli.main import cli
from trace_core.db.migrate import migrate
from trace_core.query.app import create_app
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_core.sources.webhook import signature, webhook_routes
from trace_core.transforms.spec import parse_transform
from trace_core.transforms.store import apply_transform
from trace_dagster.resources import TraceResource
from trace_dagster.transforms import trace_trigger, transform_definitions

SECRET = "s3cret-for-tests"
JOB = """kind: chain_sync
name: src
chain_id: 1
mode: {kind: fixed_target, from_block: 0, to_block: 200}
streams:
  blocks: {cryo_dataset_name: blocks, rpc_pool: p, chunk_size: 100, max_inflight: 1}
"""
TRANSFORM = """kind: transform
name: gas
job: src
inputs: [blocks]
code: {sql: "SELECT block_number, gas_used FROM blocks WHERE gas_used > 21050"}
output: gas_out
trigger: {on_input: false, cron: "*/15 * * * *", webhook: true, manual: true}
"""


@pytest.fixture
def rt(trace_env: Runtime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Runtime:
    """A job with one committed blocks range and the ``gas`` transform (cron, webhook, manual)."""
    from tests.integration.test_query_service import blocks_table

    monkeypatch.setenv("TRACE_SOURCE_GAS_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("TRACE_SOURCE_WEBHOOK_MAX_BYTES", "1024")
    rt = Runtime(load_settings())
    migrate(rt.dbs)
    spec, raw = parse_job(JOB)
    with rt.state() as conn:
        chain_sync_store.apply_job(conn, rt.settings.org_id, spec, raw)
    publish(rt.settings, rt.store, tmp_path, blocks_table(0, 100))
    apply_transform(rt, parse_transform(TRANSFORM, source="gas.yaml"))
    return rt


def counts(rt: Runtime) -> tuple[int, int, int]:
    """(source events, udf_transform tasks, task wake-ups in the outbox) of the org."""
    with rt.state() as conn:
        row = conn.execute(
            """SELECT (SELECT count(*) FROM state.source_events),
                      (SELECT count(*) FROM state.tasks WHERE operator = 'udf_transform'),
                      (SELECT count(*) FROM state.outbox o JOIN state.tasks t
                         ON o.payload->>'task_id' = t.task_id::text
                       WHERE t.operator = 'udf_transform')"""
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def test_webhook_signed_idempotent_and_refusals_write_nothing(rt: Runtime) -> None:
    app = create_app(
        rt.settings, rt.dbs, rt.store, hot_sources=None, routes=webhook_routes(rt.settings)
    )
    body = json.dumps({"reason": "new prices"}).encode()

    def post(
        job: str, key: str | None, data: bytes, sig: str | None
    ) -> tuple[int, dict[str, object]]:
        headers = {"content-type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        if sig is not None:
            headers["X-Trace-Signature"] = sig
        r = client.post(f"/v1/sources/{job}/webhook", content=data, headers=headers)
        return r.status_code, r.json()

    good = signature(SECRET.encode(), "delivery-1", body)
    with serving(app) as client:
        refusals = [
            (post("gas", "delivery-1", body, "sha256=" + "0" * 64), 401, "bad_signature"),
            (post("gas", "delivery-1", body, None), 401, "bad_signature"),
            (post("gas", "delivery-1", body + b" ", good), 401, "bad_signature"),
            (post("gas", "delivery-2", body, good), 401, "bad_signature"),  # key is signed
            (post("gas", None, body, good), 400, "bad_idempotency_key"),
            (post("gas", "delivery-1", b"x" * 2048, good), 413, "body_too_large"),
            (post("nope", "delivery-1", body, good), 404, "webhook_not_configured"),
        ]
        for (status, answer), want_status, want_code in refusals:
            assert (status, answer["error"]["code"]) == (want_status, want_code), answer  # type: ignore[index]
        assert SECRET not in json.dumps([a for (_, a), _, _ in refusals])
        assert counts(rt) == (0, 0, 0)

        status, first = post("gas", "delivery-1", body, good)
        assert status == 202 and first["created"] is True
        status, again = post("gas", "delivery-1", body, good)  # a redelivery: same run
        assert status == 200 and again["created"] is False and again["task_id"] == first["task_id"]
        other = json.dumps({"reason": "something else"}).encode()
        status, reused = post(
            "gas", "delivery-1", other, signature(SECRET.encode(), "delivery-1", other)
        )
        assert (status, reused["error"]["code"]) == (409, "idempotency_conflict")  # type: ignore[index]
    assert counts(rt) == (1, 1, 1)
    with rt.state() as conn:
        payload = conn.execute(
            "SELECT payload FROM state.tasks WHERE task_id = %s", (first["task_id"],)
        ).fetchone()[0]  # type: ignore[index]
    assert payload["trigger"] == "webhook" and len(payload["grants"]) == 1


def test_manual_trigger_is_idempotent_and_cron_schedule_runs_once_per_tick(
    rt: Runtime, tmp_path: Path
) -> None:
    # applying a transform over a stream the job lacks names the line and writes nothing
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        TRANSFORM.replace("name: gas", "name: gas2").replace("[blocks]", "[blocks, logs]")
    )
    runner = CliRunner()
    refused = runner.invoke(cli, ["apply", "--file", str(bad)])
    assert refused.exit_code == 2
    assert f"{bad}:4: inputs[1]: job 'src' has no active stream or transform output 'logs'" in (
        " ".join(refused.output.split())
    )
    assert (
        json.loads(runner.invoke(cli, ["transforms", "list", "--json"]).output)[0]["name"] == "gas"
    )

    first = runner.invoke(cli, ["trigger", "gas", "--json"])
    assert first.exit_code == 0, first.output
    double = runner.invoke(cli, ["trigger", "gas", "--json"])  # same inputs: the same run
    assert json.loads(double.output)["created"] is False
    assert json.loads(double.output)["task_id"] == json.loads(first.output)["task_id"]
    forced = runner.invoke(cli, ["trigger", "gas", "--key", "rerun-1", "--json"])
    assert json.loads(forced.output)["created"] is True
    missing = runner.invoke(cli, ["trigger", "nope"])
    assert missing.exit_code == 1 and "no transform job named 'nope'" in missing.output
    assert counts(rt) == (2, 2, 2)

    # new input data: the default key (an inputs fingerprint) changes, so a new run
    from tests.integration.test_query_service import blocks_table

    publish(rt.settings, rt.store, tmp_path, blocks_table(100, 200), start=100, end=200)
    assert json.loads(runner.invoke(cli, ["trigger", "gas", "--json"]).output)["created"] is True
    assert counts(rt) == (3, 3, 3)

    # cron: the transform's schedule; a tick evaluated twice launches one Trace run
    _assets, schedules = transform_definitions(rt)
    (sched,) = schedules
    assert sched.cron_schedule == "*/15 * * * *"
    tick = datetime(2026, 12, 7, 9, 15, tzinfo=UTC)
    with instance_for_test() as instance:
        for _ in range(2):
            ctx = build_schedule_context(instance=instance, scheduled_execution_time=tick)
            (request,) = sched.evaluate_tick(ctx).run_requests or []
            result = trace_trigger.execute_in_process(
                run_config=request.run_config,
                instance=instance,
                resources={"trace": TraceResource(home=str(rt.settings.home))},
            )
            assert result.success
    assert counts(rt) == (4, 4, 4)
    with rt.state() as conn:
        kinds = conn.execute(
            "SELECT kind, idempotency_key FROM state.source_events WHERE kind = 'cron'"
        ).fetchall()
    assert kinds == [("cron", f"cron:{tick.isoformat()}")]
