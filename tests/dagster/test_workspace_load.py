"""The load check: Dagster's own CLI loads workspace.yaml against a real Trace state database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from trace_core.chain_sync import store
from trace_core.chain_sync.yamlload import load_job_file
from trace_core.runtime import Runtime
from trace_core.settings import REPO_ROOT, Settings

DAGSTER = Path(sys.executable).with_name("dagster")
SENSORS = ("trace_dispatcher", "trace_worker_wakeups")
CLI_TIMEOUT_SECONDS = 120


def _dagster_cli(
    args: list[str], settings: Settings, dagster_home: Path
) -> subprocess.CompletedProcess[str]:
    """Run ``dagster ARGS -w workspace.yaml`` from the repo root with only this test's TRACE_*."""
    assert settings.state_url and settings.data_url
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACE_", "DAGSTER_"))}
    env.update(
        TRACE_HOME=str(settings.home),
        TRACE_STATE_URL=settings.state_url.get_secret_value(),
        TRACE_DATA_URL=settings.data_url.get_secret_value(),
        DAGSTER_HOME=str(dagster_home),
    )
    return subprocess.run(
        [str(DAGSTER), *args, "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
    )


def test_workspace_validates_and_lists_running_sensors(settings: Settings, tmp_path: Path) -> None:
    # a job in state, so loading also builds its stream assets (read from the database)
    spec, raw = load_job_file(REPO_ROOT / "examples" / "chain_sync.demo.yaml")
    with Runtime(settings).state() as conn:
        store.apply_job(conn, settings.org_id, spec, raw, "chain_sync.demo.yaml")
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    validate = _dagster_cli(["definitions", "validate"], settings, dagster_home)
    out = validate.stdout + validate.stderr
    assert validate.returncode == 0, out
    assert "Validation successful for code location trace_dagster.definitions" in out
    assert "no stream assets" not in out  # state was reachable from the subprocess

    # sensors start without manual toggling (DefaultSensorStatus.RUNNING)
    listed = _dagster_cli(["sensor", "list", "--running", "--name"], settings, dagster_home)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert set(SENSORS) <= set(listed.stdout.split()), listed.stdout
