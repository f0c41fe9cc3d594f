"""The local UDF runtime: a pool of warm workers, each a CPython process in a bubblewrap
sandbox (``trace_core.udf.sandbox.worker``) that forks once per call.

The host side here starts workers, hands each call's request to the worker's stdin, reads
the response from its stdout and the call's exit status from a status pipe, and turns what
happened into a ``UdfResult`` or a ``UdfError`` naming the cause. A worker that dies, hangs
or is left with unread input is replaced (``UdfRuntimeError`` for that call: retryable).
``unsandboxed=True`` runs the same worker without bwrap or seccomp, for trusted local
development only, and logs a warning on every call.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from trace_core.errors import SandboxUnavailable, UdfError, UdfRuntimeError
from trace_core.udf.outcome import FRAME_OVERHEAD, interpret
from trace_core.udf.payload import UdfInvocationPayload, UdfResult
from trace_core.udf.sandbox import wire
from trace_core.udf.sandbox_args import (
    INBOX_MOUNT,
    SANDBOX_ENV,
    SANDBOX_RUNNER,
    bwrap_argv,
    find_bwrap,
)

log = logging.getLogger(__name__)

RUNNER_DIR = Path(__file__).resolve().parent / "sandbox"
START_TIMEOUT_SECONDS = 60.0
#: How long past its wall limit the host waits for a worker's status before declaring it hung.
HOST_GRACE_SECONDS = 5.0
_INLINE_WRITE = 60 * 1024
_FILE_MIN = 256 * 1024
_NOBODY = 65534
_F_SETPIPE_SZ = 1031
_PIPE_BYTES = 1024 * 1024


class _Worker:
    """One warm worker process; used by one call at a time (the pool hands it out)."""

    def __init__(
        self, command: Callable[[str], tuple[list[str], dict[str, str], str]], sandboxed: bool
    ) -> None:
        self.sandboxed = sandboxed
        self.inbox = tempfile.mkdtemp(prefix="trace-udf-", dir=_inbox_root())
        if os.geteuid() == 0:  # readable by the sandbox's group 65534 only (files inherit it)
            os.chown(self.inbox, 0, _NOBODY)
            os.chmod(self.inbox, 0o2750)
        else:  # bwrap maps this user into its namespace: it reads as the owner
            os.chmod(self.inbox, 0o700)
        self._inbox_files: list[str] = []
        try:
            argv, env, self.inbox_seen = command(self.inbox)
        except BaseException:
            shutil.rmtree(self.inbox, ignore_errors=True)
            raise
        self._pending = False
        self.kept_key: str | None = None  # the reuse key of the call process the worker keeps
        self._writer: threading.Thread | None = None
        self._deadline = 0.0
        self._cap = FRAME_OVERHEAD
        ctl_r, self.ctl_w = os.pipe()
        self.st_r, st_w = os.pipe()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (closed by kill())
        argv = [*argv, str(ctl_r), str(st_w)]
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                pass_fds=(ctl_r, st_w),
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            shutil.rmtree(self.inbox, ignore_errors=True)
            raise SandboxUnavailable(f"cannot start the UDF worker: {exc}") from exc
        finally:
            os.close(ctl_r)
            os.close(st_w)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.in_fd = self.proc.stdin.fileno()
        self.out_fd = self.proc.stdout.fileno()
        for fd in (self.in_fd, self.out_fd):  # big pipes: fewer wake-ups moving tables
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
        os.set_blocking(self.out_fd, False)
        ready = self._read_status(time.monotonic() + START_TIMEOUT_SECONDS)
        if ready is None or not ready.get("ready"):
            why = (ready or {}).get("error") or self._stderr_line() or "no answer"
            self.kill()
            what = "the UDF sandbox cannot be set up" if sandboxed else "the UDF worker failed"
            raise SandboxUnavailable(f"{what}: {why}")

    def _stderr_line(self) -> str:
        self._stderr.seek(0)
        lines = [ln.strip() for ln in self._stderr.read(8192).decode(errors="replace").splitlines()]
        lines = [ln for ln in lines if ln]
        return lines[-1] if lines else ""

    def _read_status(self, deadline: float) -> dict[str, Any] | None:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([self.st_r], [], [], max(left, 0))
        if not ready:
            return None
        try:
            header, _ = wire.read_frame(self.st_r, 1 << 20)
        except (wire.FrameError, OSError):
            return None
        return header

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for fd in (self.ctl_w, self.st_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]
        self._stderr.close()
        shutil.rmtree(self.inbox, ignore_errors=True)

    def call(self, payload: UdfInvocationPayload) -> tuple[dict[str, Any] | None, bytes]:
        """Run one call: (status, response bytes). The status is None when the call answered
        with a whole frame before its exit was reported (the usual, fast case): ``settle()``
        collects that status before the next call. Raises ``UdfRuntimeError``."""
        limits = payload.limits
        tables, inline = [], []
        self._clear_inbox()
        for i, (name, data) in enumerate(payload.tables.items()):
            if len(data) >= _FILE_MIN:  # mapped by the call, no copy through a pipe
                path = os.path.join(self.inbox, f"{i}.arrow")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
                self._inbox_files.append(path)
                try:
                    wire.write_all(fd, [data])
                finally:
                    os.close(fd)
                tables.append([name, len(data), f"{self.inbox_seen}/{i}.arrow"])
            else:
                tables.append([name, len(data)])
                inline.append(data)
        header: dict[str, Any] = {
            "kind": payload.kind,
            "entry": payload.entry,
            "source": payload.source,
            "filename": payload.filename,
            "input": payload.input,
            "tables": tables,
            "limits": limits.model_dump(),
            "keep": payload.reuse_scope is not None,
        }
        parts = wire.encode(header, inline)
        head = len(parts[1])  # source and input, as JSON
        if head > wire.MAX_HEADER or head + payload.input_bytes() > limits.max_input_bytes:
            cap = min(wire.MAX_HEADER, limits.max_input_bytes)
            raise UdfError(
                "input_too_large", f"the request is {head} bytes of JSON, past the cap of {cap}"
            )
        try:
            key = payload.reuse_key() or "-"
            self.kept_key = None if key == "-" else key  # kept if the call answers
            line = (
                f"S {int(limits.wall_seconds * 1000)} {limits.cpu_seconds} {limits.memory_mb}"
                f" {payload.input_bytes()} {key}\n"
            )
            os.write(self.ctl_w, line.encode())
            if sum(len(p) for p in parts) < _INLINE_WRITE:  # fits the empty pipe: no blocking
                wire.write_all(self.in_fd, parts)
                self._writer = None
            else:
                self._writer = threading.Thread(target=self._write, args=(parts,), daemon=True)
                self._writer.start()
        except OSError as exc:
            raise UdfRuntimeError(f"the UDF worker is gone: {exc}") from exc
        self._deadline = time.monotonic() + limits.wall_seconds + HOST_GRACE_SECONDS
        self._cap = limits.max_output_bytes + FRAME_OVERHEAD + limits.max_log_bytes * 4
        self._pending = True
        out = bytearray()
        while True:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise UdfRuntimeError("the UDF worker did not report within its wall limit")
            ready, _, _ = select.select([self.out_fd, self.st_r], [], [], left)
            if self.out_fd in ready:
                self._drain(out)
                if _frame_complete(out):
                    return None, bytes(out)
            if self.st_r in ready:
                status = self._collect_status()
                self._drain(out)
                return status, bytes(out)

    def _clear_inbox(self) -> None:
        for path in self._inbox_files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._inbox_files.clear()

    def _write(self, parts: list[bytes]) -> None:
        with contextlib.suppress(OSError):
            wire.write_all(self.in_fd, parts)

    def _collect_status(self) -> dict[str, Any]:
        status = self._read_status(time.monotonic() + 1.0)
        if status is None:
            why = self._stderr_line() or f"no status (worker exit code {self.proc.poll()})"
            raise UdfRuntimeError(f"the UDF worker died: {why}")
        self._pending = False
        return status

    def settle(self) -> bool:
        """Collect the last call's exit status and leave the pipes empty; False when this
        worker must be replaced (dead, hung, or input left unread)."""
        if not self.alive():
            return False
        try:
            if self._pending:
                ready, _, _ = select.select(
                    [self.st_r], [], [], max(self._deadline - time.monotonic(), 0)
                )
                if not ready:
                    return False
                self._collect_status()
            self._drain(bytearray())
            self._clear_inbox()
        except (UdfRuntimeError, OSError):
            return False
        if self._writer is not None:
            self._writer.join(timeout=0.5)
            if self._writer.is_alive():
                return False
        return _unread(self.in_fd) == 0

    def _drain(self, out: bytearray) -> None:
        while True:
            try:
                chunk = os.read(self.out_fd, _PIPE_BYTES)
            except BlockingIOError:
                return
            if not chunk:
                return
            if len(out) <= self._cap:
                out += chunk


def _inbox_root() -> str | None:
    """Tables are handed over in files under here: memory-backed /dev/shm when usable."""
    return "/dev/shm" if os.access("/dev/shm", os.W_OK | os.X_OK) else None


def _frame_complete(out: bytearray) -> bool:
    size = wire.PREFIX.size
    if len(out) < size:
        return False
    magic, hlen, blen = wire.PREFIX.unpack_from(out)
    return bool(magic == wire.MAGIC and len(out) >= size + hlen + blen)


def _unread(fd: int) -> int:
    buf = bytearray(4)
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buf)
    except OSError:
        return 1
    return int.from_bytes(buf, sys.byteorder)


class LocalSandboxInvoker:
    """``RuntimeInvoker`` over a pool of warm sandboxed workers (started on first use)."""

    def __init__(
        self,
        *,
        pool_size: int = 2,
        unsandboxed: bool = False,
        bwrap: str | Path | None = None,
        tmp_mb: int = 64,
    ) -> None:
        self.name = "unsandboxed" if unsandboxed else "local"
        self.unsandboxed = unsandboxed
        self.pool_size = max(1, pool_size)
        self._bwrap = bwrap
        self._tmp_mb = tmp_mb
        # idle workers, oldest first (a worker settles while the others serve); a call takes
        # the one whose kept process matches its reuse key, else the oldest
        self._idle: collections.deque[_Worker] = collections.deque()
        self._idle_cv = threading.Condition()
        self._started = 0
        self._lock = threading.Lock()
        self._bwrap_path: str | None = None
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="udf-spawn")
        self._closed = False

    def _command(self, inbox: str) -> tuple[list[str], dict[str, str], str]:
        """(argv, environment, the inbox's path as the worker sees it)."""
        if self.unsandboxed:
            argv = [sys.executable, "-s", "-B", str(RUNNER_DIR / "worker.py"), "unsandboxed"]
            keep = ("PYTHONHASHSEED", "MALLOC_ARENA_MAX", "ARROW_DEFAULT_MEMORY_POOL", "TZ", "LANG")
            env = {k: SANDBOX_ENV[k] for k in (*keep, "JE_ARROW_MALLOC_CONF", "PATH")}
            return argv, env, inbox
        if self._bwrap_path is None:
            self._bwrap_path = find_bwrap(self._bwrap)
        argv = bwrap_argv(self._bwrap_path, RUNNER_DIR, inbox=inbox, tmp_mb=self._tmp_mb)
        return [*argv, *SANDBOX_RUNNER, "sandbox"], {}, INBOX_MOUNT

    def start(self, workers: int | None = None) -> None:
        """Start workers now (else the first calls start them). Raises ``SandboxUnavailable``."""
        for _ in range(min(workers or self.pool_size, self.pool_size)):
            w = self._new_worker()
            if w is not None:
                self._put_idle(w)

    def _new_worker(self) -> _Worker | None:
        with self._lock:
            if self._started >= self.pool_size:
                return None
            self._started += 1
        try:
            # bwrap's --die-with-parent follows the THREAD that started it: start every worker
            # from the invoker's own long-lived thread, not from a caller's (which may end)
            return self._spawner.submit(
                _Worker, self._command, sandboxed=not self.unsandboxed
            ).result()
        except BaseException:
            with self._lock:
                self._started -= 1
            raise

    def _put_idle(self, w: _Worker) -> None:
        with self._idle_cv:
            self._idle.append(w)
            self._idle_cv.notify()

    def _pick_idle(self, key: str | None, wait: float) -> _Worker | None:
        with self._idle_cv:
            if not self._idle and wait > 0:
                self._idle_cv.wait(wait)
            if not self._idle:
                return None
            match = next((w for w in self._idle if key is not None and w.kept_key == key), None)
            if match is None:  # prefer one keeping nothing: its kept process may serve later
                match = next((w for w in self._idle if w.kept_key is None), self._idle[0])
            self._idle.remove(match)
            return match

    def _take(self, key: str | None = None) -> _Worker:
        while True:
            w = self._pick_idle(key, 0)
            if w is None:
                w = self._new_worker()
                if w is None:  # all busy: wait for one back (or a slot freed by a discard)
                    w = self._pick_idle(key, 0.05)
                    if w is None:
                        continue
            if w.settle():
                return w
            self._discard(w)

    def _give_back(self, w: _Worker, ok: bool) -> None:
        if ok and not self._closed:
            self._put_idle(w)
        else:
            self._discard(w)

    def _discard(self, w: _Worker) -> None:
        w.kill()
        with self._lock:
            self._started -= 1

    def invoke(self, payload: UdfInvocationPayload) -> UdfResult:
        if self._closed:
            raise UdfRuntimeError("the UDF invoker is closed")
        if payload.input_bytes() > payload.limits.max_input_bytes:
            raise UdfError(
                "input_too_large",
                f"the payload is {payload.input_bytes()} bytes, past the cap of "
                f"{payload.limits.max_input_bytes}",
            )
        if self.unsandboxed:
            log.warning(
                "UDF runs UNSANDBOXED (TRACE_UDF_RUNTIME=unsandboxed): trusted code only",
                extra=payload.log_fields(),
            )
        w = self._take(payload.reuse_key())
        ok = False
        try:
            status, out = w.call(payload)
            ok = True
        except UdfError:  # refused before anything reached the worker: it is fine
            ok = True
            raise
        finally:
            self._give_back(w, ok)
        return interpret(payload, status, out, self.name)

    def close(self) -> None:
        self._closed = True
        with self._idle_cv:
            idle = list(self._idle)
            self._idle.clear()
        for w in idle:
            w.kill()
        self._spawner.shutdown(wait=False)

    def __enter__(self) -> LocalSandboxInvoker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
