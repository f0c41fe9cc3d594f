"""The newcomer's path, for real: ``trace-lite demo`` as a subprocess on its own embedded
Postgres, anvil, ``dagster dev`` (daemon sensors launching real runs) and the Query Service.

One test, in the order a user lives it: start the demo, Ctrl-C it mid-sync, check nothing is
left running, run it again with ``--exit``, then check the MVP-6 invariants in the stores it
left behind and compare the Parquet and the alerts fired (examples/alerts/large_transfer.yaml:
transfers above 9.9e14 wei) with an identical chain (the demo chain is deterministic).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import psycopg
import pytest

from trace_core.db.connection import resolve_databases
from trace_core.db.embedded import stop_embedded
from trace_core.settings import Settings
from trace_lite.demo import DEMO_GENESIS, DEMO_SEED, TIP_BLOCKS
from trace_lite.devtools.devchain import DevChain
from trace_lite.stack import free_port

TO_BLOCK = 300
CHUNK = 100
STREAMS = ("blocks", "transactions", "logs")


def job_yaml(to_block: int, chunk: int) -> str:
    """The demo job over ``[0, to_block)``: the streams the demo prints and alerts on."""
    head = f"""
kind: chain_sync
name: demo
chain_id: 31337
mode: {{kind: fixed_target, from_block: 0, to_block: {to_block}}}
streams:
"""
    return head + "".join(
        f"""  {s}:
    cryo_dataset_name: {s}
    rpc_pool: demo
    chunk_size: {chunk}
    max_inflight: 2
"""
        for s in STREAMS
    )


JOB_YAML = job_yaml(TO_BLOCK, CHUNK)


def _processes_of(home: Path) -> list[str]:
    """Live processes whose environment names ``home`` as TRACE_HOME (what the demo started)."""
    needle = f"TRACE_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in environ.split(b"\0") and ") Z " not in stat:
            found.append(f"{entry.name}: {cmd[:120]}")
    return found


def _wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert proc.poll() is None, f"demo exited early:\n{path.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} in demo output:\n{path.read_text()}"
        time.sleep(0.2)


@pytest.mark.timeout(600)
def test_demo_interrupted_then_resumed_leaves_correct_data(tmp_path: Path) -> None:
    home = tmp_path / "home"
    job = tmp_path / "demo.yaml"
    job.write_text(JOB_YAML)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACE_", "DAGSTER_"))}
    env |= {
        "TRACE_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "TRACE_QUERY_PORT": str(free_port("127.0.0.1")),
        "COLUMNS": "120",
    }
    argv = [str(Path(sys.executable).parent / "trace-lite"), "demo", "--file", str(job)]
    argv += ["--port", str(free_port("127.0.0.1"))]

    # 1. Ctrl-C once the services are up and the sync is under way
    out1 = tmp_path / "demo1.log"
    with out1.open("wb") as f:
        first = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT)
    _wait_for(out1, "Dagster UI:", first, timeout=240)
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=90) == 0, out1.read_text()
    assert "stopped dagster, query-service, embedded postgres" in out1.read_text()
    assert _processes_of(home) == []

    # 2. run again to the end: it resumes on the same home and prints the result tables
    second_started = datetime.now(UTC)
    second = subprocess.run(
        [*argv, "--exit"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=420
    )
    text = second.stdout.decode(errors="replace")
    assert second.returncode == 0, text
    assert "unchanged, resuming" in text
    assert "matches the chain" in text and "differs" not in text
    assert _processes_of(home) == []

    # 3. MVP-6 invariants, read from the stores the demo left behind
    settings = Settings(home=home)
    dbs = resolve_databases(settings)
    try:
        with psycopg.connect(dbs.state_url) as conn:
            tasks = dict(
                conn.execute("SELECT status, count(*) FROM state.tasks GROUP BY 1").fetchall()
            )
            assert set(tasks) == {"succeeded"}, tasks  # no stuck or dead tasks
            pending = conn.execute(
                "SELECT DISTINCT topic FROM state.outbox WHERE status = 'pending'"
            ).fetchall()
            # only the live follower's newest dataset_events may wait for the next tick
            assert set(pending) <= {("dataset_events",)}, pending
            assert conn.execute("SELECT count(*) FROM state.queue_dead").fetchone() == (0,)
            # one evaluation per committed transactions range (the alert reads transactions)
            evaluations = "SELECT count(*) FROM state.tasks WHERE operator = 'alert_evaluate'"
            assert conn.execute(evaluations).fetchone() == (TO_BLOCK // CHUNK,)
            versions = conn.execute(
                """SELECT d.dataset_key, v.range_start, v.range_end, v.storage_prefix
                   FROM state.dataset_versions v JOIN state.datasets d USING (dataset_uuid)
                   WHERE v.range_end <= %s ORDER BY 1, 2""",
                (TO_BLOCK,),
            ).fetchall()
        expected = [(s, a, a + CHUNK) for s in sorted(STREAMS) for a in range(0, TO_BLOCK, CHUNK)]
        assert [(k, a, b) for k, a, b, _ in versions] == expected  # each range committed once

        objects = home / "objects"
        files = {
            s: [str(objects / p / "*.parquet") for k, _, _, p in versions if k == s]
            for s in STREAMS
        }
        con = duckdb.connect()
        counts = {
            s: con.sql(f"SELECT count(*) FROM read_parquet({files[s]})").fetchone()[0]
            for s in STREAMS
        }  # type: ignore[index]
        with psycopg.connect(dbs.data_url) as conn:
            alerts = conn.execute(
                """SELECT e.tx_hash, d.status FROM data.alert_events e
                   JOIN data.alert_deliveries d USING (dedupe_key)
                   WHERE d.channel_kind = 'log' ORDER BY e.block_number"""
            ).fetchall()
            echoed = conn.execute(
                """SELECT d.status, d.delivered_at >= %s FROM data.alert_deliveries d
                   WHERE d.channel_kind = 'webhook'""",
                (second_started,),
            ).fetchall()
        hashes = dict(
            con.sql(
                f"SELECT block_number, '0x' || lower(hex(block_hash)) FROM read_parquet({files['blocks']})"
            ).fetchall()
        )
    finally:
        stop_embedded(home)

    with DevChain.start(
        TO_BLOCK + TIP_BLOCKS, DEMO_SEED, chain_id=31337, genesis_timestamp=DEMO_GENESIS
    ) as chain:
        assert counts == {
            "blocks": TO_BLOCK,
            "transactions": chain.count_transactions(0, TO_BLOCK),
            "logs": chain.count_logs(0, TO_BLOCK),
        }
        for n in (0, 1, TO_BLOCK // 2, TO_BLOCK - 1):
            assert hashes[n] == chain.rpc.call("eth_getBlockByNumber", [hex(n), False])["hash"]
        blocks = chain.rpc.batch(
            [("eth_getBlockByNumber", [hex(n), True]) for n in range(TO_BLOCK)]
        )
        large = [
            tx["hash"] for b in blocks for tx in b["transactions"] if int(tx["value"], 16) > 9.9e14
        ]
    assert large, "the seeded chain should carry a large transfer below TO_BLOCK"
    # exactly one event per large transfer, each delivered once to its log channel
    assert alerts == [(h, "delivered") for h in large]
    assert text.count("large_transfer │ warning") == len(large), text  # and the demo printed them
    # each event also went to the demo's echo receiver (a webhook): those delivered during the
    # second run are exactly the arrivals it printed; none failed
    assert "echo receiver at http://127.0.0.1:" in text
    assert len(echoed) == len(large) and {s for s, _ in echoed} <= {"delivered", "pending"}
    arrived = sum(1 for s, now in echoed if s == "delivered" and now)
    assert text.count("│ received ") == arrived, text
    assert f"the echo receiver got {arrived} delivery(ies) in this run" in text
