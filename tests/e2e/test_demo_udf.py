"""``trace-lite demo --udf --exit`` for real: the example Python transform runs in the UDF
sandbox once per committed ``logs`` range through ``dagster dev``'s launched runs, its output is
checked against the Transfer logs, the example Python alert evaluates over it, and a signed
webhook delivery sent twice queues one run (the repeat none). A small job keeps it lean."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.e2e.test_demo import _processes_of, job_yaml
from trace_core.db.connection import resolve_databases
from trace_core.db.embedded import stop_embedded
from trace_core.settings import Settings
from trace_lite.stack import free_port

TO_BLOCK = 200
CHUNK = 100
JOB_YAML = job_yaml(TO_BLOCK, CHUNK)


@pytest.mark.timeout(600)
def test_demo_udf_runs_the_transform_alert_and_webhook(tmp_path: Path) -> None:
    home = tmp_path / "home"
    job = tmp_path / "demo.yaml"
    job.write_text(JOB_YAML)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACE_", "DAGSTER_"))}
    env |= {
        "TRACE_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "TRACE_QUERY_PORT": str(free_port("127.0.0.1")),
        "COLUMNS": "160",
    }
    argv = [str(Path(sys.executable).parent / "trace-lite"), "demo", "--udf", "--exit"]
    argv += ["--file", str(job), "--port", str(free_port("127.0.0.1"))]
    done = subprocess.run(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=540
    )
    text = done.stdout.decode(errors="replace")
    assert done.returncode == 0, text[-4000:]
    assert (
        "applied transform 'erc20_volume'" in text and "applied Python alert 'busy_token'" in text
    )
    verdict = re.search(
        rf"transfers counted by the UDF over \[0, {TO_BLOCK}\): (\d+) (matches|differs from)", text
    )
    assert verdict is not None, text[-4000:]
    assert verdict.group(2) == "matches" and int(verdict.group(1)) > 0, verdict.group(0)
    assert re.search(r"first delivery: HTTP 20\d a run was queued", text), text[-3000:]
    assert re.search(r"redelivery: HTTP 20\d no new run \(same key\)", text), text[-3000:]
    assert _processes_of(home) == []

    dbs = resolve_databases(Settings(home=home))
    try:
        with psycopg.connect(dbs.state_url) as conn:
            runs = conn.execute(
                """SELECT payload->>'trigger', status, count(*) FROM state.tasks
                   WHERE operator = 'udf_transform' GROUP BY 1, 2 ORDER BY 1, 2"""
            ).fetchall()
            outputs = conn.execute(
                """SELECT v.range_start, v.range_end FROM state.dataset_versions v
                   JOIN state.datasets d USING (dataset_uuid)
                   WHERE d.dataset_key = 'erc20_volume' ORDER BY 1"""
            ).fetchall()
            evaluations = conn.execute(
                """SELECT status, count(*) FROM state.tasks WHERE operator = 'alert_evaluate'
                   AND payload->>'alert_name' = 'busy_token' GROUP BY 1"""
            ).fetchall()
            sources = conn.execute(
                "SELECT kind, count(*) FROM state.source_events GROUP BY 1"
            ).fetchall()
    finally:
        stop_embedded(home)
    # one on-input run per committed logs range, each committed once; the webhook's run (if it
    # finished before the demo stopped) pins every committed range: one version over them all
    assert [(a, b) for a, b in outputs if b - a == CHUNK] == [
        (a, a + CHUNK) for a in range(0, TO_BLOCK, CHUNK)
    ]
    assert [(a, b) for a, b in outputs if b - a != CHUNK] in ([], [(0, TO_BLOCK)]), outputs
    on_input = [(s, n) for trig, s, n in runs if trig == "on_input"]
    assert on_input == [("succeeded", TO_BLOCK // CHUNK)], runs
    # the webhook delivered twice made one source event and one run
    assert ("webhook", 1) in sources, sources
    assert sum(n for trig, _, n in runs if trig == "webhook") == 1, runs
    # the Python alert evaluated each on-input erc20_volume range, none dead (the webhook
    # run's own output may commit as the demo stops: its evaluation may still be queued)
    by_status = dict(evaluations)
    assert by_status.get("succeeded", 0) >= TO_BLOCK // CHUNK and "dead" not in by_status, (
        evaluations
    )
