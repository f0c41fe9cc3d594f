"""``trace-lite up`` / ``down`` for real: dagster dev and the Query Service in the background on
the embedded Postgres, a second ``up`` refused, and ``down`` leaving nothing running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_demo import _processes_of
from trace_lite.stack import STACK_FILE, free_port


def _cli(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "trace-lite"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(400)
def test_up_serves_both_services_and_down_stops_everything(tmp_path: Path) -> None:
    home = tmp_path / "home"
    query_port, ui_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACE_", "DAGSTER_"))}
    env |= {
        "TRACE_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "TRACE_QUERY_PORT": str(query_port),
        "COLUMNS": "200",
    }
    try:
        up = _cli("up", "--port", str(ui_port), env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"Dagster UI: http://127.0.0.1:{ui_port}" in up.stdout
        assert (home / STACK_FILE).exists()
        # `up` returned; both services keep answering from their own process groups
        assert httpx.get(f"http://127.0.0.1:{query_port}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{ui_port}/server_info").status_code == 200
        status = _cli("status", "--json", env=env, timeout=60)
        assert status.returncode == 0, status.stderr

        again = _cli("up", "--port", str(ui_port), env=env, timeout=60)
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        down = _cli("down", env=env, timeout=120)
    assert down.returncode == 0, down.stderr
    assert "dagster" in down.stdout and "query-service" in down.stdout
    assert "embedded postgres" in down.stdout
    assert not (home / STACK_FILE).exists()
    assert _processes_of(home) == []
    assert _cli("down", env=env, timeout=60).stdout.strip() == "nothing was running"
