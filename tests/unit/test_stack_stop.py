"""Stopping the local stack's process groups (``trace-lite down``, the end of ``demo``)."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trace_lite.stack import Service, _group_alive, stop_services


def test_a_group_left_with_only_zombies_counts_as_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # a service's process that exited but was not reaped yet (init reaps an orphan's children
    # when it gets to it): signal 0 still reaches it, yet nothing runs any more
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    try:
        while True:  # exited and unreaped: a zombie of this process, alone in its group
            state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                break
            time.sleep(0.01)
        assert not _group_alive(proc.pid)
        with caplog.at_level(logging.WARNING, logger="trace_lite.stack"):
            stopped = stop_services([Service("svc", proc.pid, "", "")], grace=600)
        assert stopped == ["svc"]
        assert "did not stop" not in caplog.text  # not waited out, not SIGKILLed
    finally:
        proc.wait()


def test_a_running_group_counts_as_alive_until_it_stops() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    try:
        assert _group_alive(proc.pid)
        assert stop_services([Service("svc", proc.pid, "", "")], children=[proc]) == ["svc"]
        assert proc.returncode is not None and not _group_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()
