"""The local stack behind ``trace-lite up``, ``down`` and ``demo``.

Two long-running services, each started as ``<venv>/bin/...`` in its own session (process
group), logging to ``<TRACE_HOME>/logs/``:

* ``dagster dev`` (webserver + daemon + code server) on ``workspace.yaml``;
* the Query Service (``trace-lite query-service``).

What was started is recorded in ``<TRACE_HOME>/stack.json`` so ``down`` (another process) can
stop exactly that: SIGTERM to each process group, SIGKILL after a grace period, then the
embedded Postgres if the stack runs on it. Stopping a group, not a pid, is what leaves no
orphans: ``dagster dev`` has children of its own (daemon, webserver, code server, runs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import httpx

from trace_core.errors import ConfigError, TraceError
from trace_core.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)

STACK_FILE = "stack.json"
STOP_GRACE_SECONDS = 20.0
READY_TIMEOUT_SECONDS = 180.0


class StackError(TraceError):
    """A stack service did not start, or a stack is already running."""

    code = "stack"


@dataclass
class Service:
    name: str
    pid: int
    url: str
    log_path: str


@dataclass
class StackRecord:
    """What ``up`` started, as written to ``stack.json``."""

    services: list[Service] = field(default_factory=list)
    embedded_postgres: bool = False
    started_at: float = field(default_factory=time.time)

    @classmethod
    def load(cls, path: Path) -> StackRecord | None:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StackError(
                f"{path} is unreadable ({exc}); remove it after checking no stack runs"
            ) from exc
        return cls(
            services=[Service(**s) for s in raw.get("services", [])],
            embedded_postgres=bool(raw.get("embedded_postgres")),
            started_at=float(raw.get("started_at", 0)),
        )

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)


def venv_bin(name: str) -> str:
    """A console script next to the running interpreter (the project's venv)."""
    candidate = Path(sys.executable).parent / name
    if not candidate.exists():
        raise ConfigError(f"{candidate} not found: run `make setup` first")
    return str(candidate)


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def service_env(settings: Settings, dagster_home: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of every stack service: ours, with absolute Trace and Dagster homes."""
    env = dict(os.environ)
    env["TRACE_HOME"] = str(settings.resolved_home().resolve())
    env["DAGSTER_HOME"] = str(dagster_home.resolve())
    env["TRACE_QUERY_HOST"] = settings.query_host
    env["TRACE_QUERY_PORT"] = str(settings.query_port)
    env.update(extra)
    return env


class LocalStack:
    """Start, watch and stop the Dagster and Query Service processes of one Trace home."""

    def __init__(
        self,
        settings: Settings,
        *,
        dagster_home: Path,
        dagster_port: int = 3000,
        host: str = "127.0.0.1",
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.home = settings.resolved_home()
        self.dagster_home = dagster_home
        self.dagster_port = dagster_port
        self.host = host
        self.env = service_env(settings, dagster_home, extra_env or {})
        self.record_path = self.home / STACK_FILE
        self.logs = self.home / "logs"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._log_files: list[IO[bytes]] = []
        self.record = StackRecord(
            embedded_postgres=settings.database_url is None and settings.state_url is None
        )

    @property
    def dagster_url(self) -> str:
        return f"http://{self.host}:{self.dagster_port}"

    @property
    def query_url(self) -> str:
        return f"http://{self.settings.query_host}:{self.settings.query_port}"

    def check_not_running(self) -> None:
        """Refuse to start over a stack that is still up (``trace-lite down`` first)."""
        previous = StackRecord.load(self.record_path)
        if previous is not None:
            live = [s for s in previous.services if alive(s.pid)]
            if live:
                names = ", ".join(f"{s.name} (pid {s.pid})" for s in live)
                raise StackError(
                    f"a stack is already running from {self.home}: {names}; run `trace-lite down`"
                )
            self.record_path.unlink(missing_ok=True)
        for name, host, port in (
            ("Dagster webserver", self.host, self.dagster_port),
            ("Query Service", self.settings.query_host, self.settings.query_port),
        ):
            if not port_free(host, port):
                raise StackError(
                    f"{name} port {host}:{port} is in use; stop what uses it or pick another port"
                )

    def start(self) -> None:
        """Start both services and record them. Raises ``StackError`` if one cannot start."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        self._spawn("query-service", [venv_bin("trace-lite"), "query-service"], self.query_url)
        self._spawn(
            "dagster",
            [
                venv_bin("dagster"), "dev",
                "-w", str(REPO_ROOT / "workspace.yaml"),
                "-h", self.host, "-p", str(self.dagster_port),
                "--log-level", "warning",
            ],
            self.dagster_url,
        )  # fmt: skip

    def _spawn(self, name: str, argv: list[str], url: str) -> None:
        log_path = self.logs / f"{name}.log"
        out = log_path.open("ab")
        self._log_files.append(out)
        proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = proc
        self.record.services.append(Service(name, proc.pid, url, str(log_path)))
        self.record.save(self.record_path)  # at once: a killed parent leaves `down` a record
        log.info("started %s (pid %s), log %s", name, proc.pid, log_path)

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Poll each service's health endpoint until it answers; a dead process fails fast."""
        probes = {
            "query-service": f"{self.query_url}/healthz",
            "dagster": f"{self.dagster_url}/server_info",
        }
        pending = dict(probes)
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while pending:
                for name, url in list(pending.items()):
                    proc = self.processes[name]
                    if proc.poll() is not None:
                        raise StackError(
                            f"{name} exited with {proc.returncode}; see {self.logs / (name + '.log')}"
                        )
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(url).status_code == 200:
                            del pending[name]
                if pending and time.monotonic() > deadline:
                    raise StackError(
                        f"{', '.join(pending)} not ready after {timeout:g}s; see {self.logs}"
                    )
                if pending:
                    time.sleep(0.5)

    def stop(self) -> list[str]:
        """Stop what this object started (and the embedded Postgres); return what was stopped."""
        stopped = stop_services(self.record.services, children=list(self.processes.values()))
        for f in self._log_files:
            f.close()
        if self.record.embedded_postgres:
            from trace_core.db.embedded import stop_embedded

            if stop_embedded(self.home):
                stopped.append("embedded postgres")
        self.record_path.unlink(missing_ok=True)
        return stopped


def stop_services(
    services: list[Service],
    grace: float = STOP_GRACE_SECONDS,
    children: list[subprocess.Popen[bytes]] | None = None,
) -> list[str]:
    """SIGTERM each service's process group, wait up to ``grace`` seconds, then SIGKILL.
    ``children`` (when this process started them) are polled so none is left a zombie."""
    children = children or []
    groups = {}
    for s in services:
        try:
            groups[s.name] = os.getpgid(s.pid)
        except ProcessLookupError:
            continue
    for pgid in groups.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_group_alive(g) for g in groups.values()):
        for child in children:
            child.poll()
        time.sleep(0.2)
    for name, pgid in groups.items():
        if _group_alive(pgid):
            log.warning("%s did not stop in %gs; killing it", name, grace)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)
    return sorted(groups)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs. Zombies do not count: a service's
    children that exited after their parent wait for init to reap them, and signal 0 still
    reaches them, which made every stop look stuck until the grace ran out."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    members = _group_states(pgid)
    return members is None or any(state not in ("Z", "X") for state in members)


def _group_states(pgid: int) -> list[str] | None:
    """The states (``R``, ``S``, ``Z`` ...) of group ``pgid``'s processes from /proc; None
    where /proc is not available."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    states: list[str] = []
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if len(fields) > 2 and fields[2] == str(pgid):
            states.append(fields[0])
    return states


def down(settings: Settings) -> list[str]:
    """Stop the stack recorded under the Trace home (``trace-lite down``)."""
    home = settings.resolved_home()
    path = home / STACK_FILE
    record = StackRecord.load(path)
    stopped: list[str] = []
    if record is not None:
        stopped = stop_services(record.services)
    embedded = settings.database_url is None and settings.state_url is None
    if embedded and (home / "pg").exists():
        from trace_core.db.embedded import stop_embedded

        if stop_embedded(home):
            stopped.append("embedded postgres")
    path.unlink(missing_ok=True)
    return stopped
