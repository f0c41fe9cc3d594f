"""The warm UDF worker: runs inside the sandbox, imports only the stdlib and pyarrow.

Started as ``python worker.py MODE CTL_FD STATUS_FD`` (MODE ``sandbox`` or ``unsandboxed``).
It drops to uid 65534 (when started as root), installs the zygote seccomp filter, imports
pyarrow once, says ready on STATUS_FD, then loops: each ``S <wall_ms> <cpu_s> <memory_mb>
<in_bytes> <key>`` line on CTL_FD runs one call in a process forked ahead of it. The call reads its
request frame from stdin, sets its rlimits, installs the call filter, runs the UDF and writes
its response frame to stdout; the zygote never sees either (no call's data stays in the
zygote's memory for the next call to find). The zygote waits for the call, SIGKILLs it past
its wall time, wipes /tmp and writes a status frame: exit code or signal, CPU time, peak RSS.

A call with a reuse ``key`` (not ``-``; the host derives it from the payload's
``reuse_scope``, code and limits) stays alive after answering, and the next call with the
same key runs in it, like a warm Lambda: a fresh process pays ~15 ms of page faults per 1M
rows that a warm one does not. The zygote reuses it only while a fresh call would have no
more room: its CPU limit is moved on by the call's budget (``prlimit``, which the call itself
may not do), and the address space left must hold the new inputs plus ``memory_mb``. Calls
of different keys never share a process, and /tmp is wiped when a kept process ends.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import linecache
import math
import os
import resource
import select
import shutil
import signal
import stat
import sys
import time
import traceback
from typing import Any

try:  # as trace_core.udf.sandbox.worker (Lambda handler, tests)
    from . import seccomp_bpf, wire
except ImportError:  # as a script inside the sandbox: its own directory is sys.path[0]
    import seccomp_bpf  # type: ignore[import-not-found,no-redef]
    import wire  # type: ignore[import-not-found,no-redef]

NOBODY = 65534
PR_SET_DUMPABLE = 4
PR_SET_PDEATHSIG = 1
PAGE = os.sysconf("SC_PAGE_SIZE")


def _status(fd: int, header: dict[str, Any]) -> None:
    wire.write_all(fd, wire.encode(header))


def harden_zygote() -> None:
    """Drop root (bwrap kept only CAP_SETUID/CAP_SETGID for this), forbid privilege gain and
    ptrace-style access from the calls, install the zygote filter, verify no capability is left."""
    if os.getuid() == 0:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
    seccomp_bpf.prctl(PR_SET_DUMPABLE, 0)
    seccomp_bpf.install(seccomp_bpf.zygote_filter())
    with open("/proc/self/status") as f:
        caps = {k: v.strip() for k, _, v in (line.partition(":") for line in f)}
    for key in ("CapEff", "CapPrm", "CapAmb"):
        if int(caps.get(key, "0"), 16) != 0:
            raise OSError(f"{key} is {caps[key]} after dropping privileges")


def _warm_arrow() -> None:
    """Import pyarrow and run its common kernels once, single-threaded, so every call forks
    with them initialised (Arrow registers kernels lazily: per call that cost ~20 ms of CPU).
    No thread may be left running in the zygote: it forks."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.ipc as ipc

    t = pa.table(
        {
            "k": pa.array([1, 2, 1], pa.int32()),
            "b": pa.array([b"a" * 20, b"b" * 20, b"a" * 20], pa.binary(20)),
            "s": ["x", "y", "x"],
            "v": pa.array([1, 2, 3], pa.int64()),
        }
    )
    t = t.filter(pc.greater(t["v"], 0))
    aggs = [("v", "sum"), ("v", "count"), ("v", "min"), ("v", "max"), ("v", "mean")]
    aggs += [("b", "count_distinct"), ("s", "count_distinct")]
    g = t.group_by(["k", "s"], use_threads=False).aggregate(aggs)
    g.join(t, ["k", "s"], use_threads=False).sort_by("k")
    pc.cast(t["k"], pa.int64())
    pc.sum(t["v"])
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, g.schema) as w:
        w.write_table(g)
    ipc.open_stream(sink.getvalue()).read_all()


def wipe_tmp() -> None:
    def onerror(func: Any, path: str, exc: Any) -> None:
        os.chmod(os.path.dirname(path) or path, stat.S_IRWXU)
        try:
            os.chmod(path, stat.S_IRWXU)
            func(path)
        except FileNotFoundError:
            pass

    for entry in os.scandir("/tmp"):
        if entry.is_dir(follow_symlinks=False):
            os.chmod(entry.path, stat.S_IRWXU)
            shutil.rmtree(entry.path, onerror=onerror)
        else:
            os.unlink(entry.path)


def zygote(mode: str, ctl_fd: int, status_fd: int) -> None:
    try:
        if mode == "sandbox":
            harden_zygote()
        _warm_arrow()
    except Exception as exc:  # report why, the host fails closed
        _status(status_fd, {"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    gc.collect()
    gc.freeze()  # calls' collections then skip the zygote's objects: fewer copy-on-write faults
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:  # forking a multi-threaded zygote could deadlock its calls
        _status(status_fd, {"ready": False, "error": f"the worker runs {threads} threads"})
        return
    _status(status_fd, {"ready": True, "pid": os.getpid(), "uid": os.getuid()})
    ctl = os.fdopen(ctl_fd, "rb", buffering=0)
    fresh: _Call | None = None
    kept: _Call | None = None
    try:
        while True:
            # Fork the next call ahead of its request: the fork is off the call's critical path.
            if fresh is None:
                fresh = _Call.fork(mode, ctl, status_fd)
            if kept is not None and not select.select([ctl], [], [], KEPT_IDLE_SECONDS)[0]:
                _retire(kept, mode)  # idle too long: give its memory back
                kept = None
            line = ctl.readline()
            if not line:
                return
            _, wall_ms, cpu_s, memory_mb, in_bytes, key = line.decode().split()
            room = int(memory_mb) * 1024 * 1024 + int(in_bytes)
            if kept is not None and not kept.fits(key, room, int(cpu_s)):
                _retire(kept, mode)
                kept = None
            if kept is not None:
                this = kept
            else:
                this, fresh = fresh, None
            status = this.run(int(wall_ms) / 1000)
            if status.get("kept"):
                this.key = key
                kept = this
            else:
                kept = None
                if mode == "sandbox":
                    wipe_tmp()
            _status(status_fd, status)
    finally:
        for c in (fresh, kept):
            if c is not None:
                c.kill()


#: A kept call process idle this long is ended (its memory given back).
KEPT_IDLE_SECONDS = 60.0
#: A kept call's hard CPU limit, in calls' budgets: it is retired before it gets there.
KEPT_CPU_CALLS = 64
CLK_TCK = os.sysconf("SC_CLK_TCK")


class _Call:
    """A call process forked by the zygote: it waits for ``go`` before reading its request,
    so a kept call and the next fresh one never race for stdin."""

    def __init__(self, pid: int, go_w: int, done_r: int) -> None:
        self.pid = pid
        self.go_w = go_w
        self.done_r = done_r
        self.pidfd = os.pidfd_open(pid)
        self.key = "-"
        self.first_cap: int | None = None

    @classmethod
    def fork(cls, mode: str, ctl: Any, status_fd: int) -> _Call:
        go_r, go_w = os.pipe()
        done_r, done_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            ctl.close()
            os.close(status_fd)
            os.close(go_w)
            os.close(done_r)
            call(mode, go_r, done_w)  # never returns
        os.close(go_r)
        os.close(done_w)
        return cls(pid, go_w, done_r)

    def cpu_seconds(self) -> float:
        """CPU used so far, all threads, as the kernel counts it (the call cannot fake it)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def fits(self, key: str, room: int, budget: int) -> bool:
        """Whether the next call may run here: the same key, and as much room as a fresh call
        has (``room`` bytes of address space: its inputs and memory limit). On True the CPU
        limit has been moved on by ``budget`` seconds."""
        if key == "-" or key != self.key:
            return False
        try:
            used = self.cpu_seconds()
            _, hard = resource.prlimit(self.pid, resource.RLIMIT_CPU)
            with open(f"/proc/{self.pid}/statm") as f:
                vsz = int(f.read().split()[0]) * PAGE
            if self.first_cap is None:  # what its first call was allowed: no growth past it
                self.first_cap = resource.prlimit(self.pid, resource.RLIMIT_AS)[0]
            soft = math.ceil(used) + budget
            if soft + 1 > hard or vsz > self.first_cap:
                return False
            resource.prlimit(self.pid, resource.RLIMIT_CPU, (soft, hard))
            space = vsz + room
            resource.prlimit(self.pid, resource.RLIMIT_AS, (space, resource.RLIM_INFINITY))
            resource.prlimit(self.pid, resource.RLIMIT_DATA, (space, resource.RLIM_INFINITY))
        except (OSError, ValueError):
            return False
        return True

    def run(self, wall: float) -> dict[str, Any]:
        """Let the call go and wait for it: answered and kept, exited, or past ``wall``."""
        t0 = time.monotonic()
        try:
            cpu0 = self.cpu_seconds() if self.key != "-" else 0.0
            os.write(self.go_w, b"g")
        except OSError:
            cpu0 = 0.0  # it died: reaped below
        timed_out = False
        deadline = t0 + wall
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(self.pid, signal.SIGKILL)
                timed_out = True
                break
            ready, _, _ = select.select([self.pidfd, self.done_r], [], [], left)
            if self.pidfd in ready:
                break
            if self.done_r in ready:
                msg = os.read(self.done_r, 16)
                if msg:
                    return {
                        "exit": 0,
                        "kept": True,
                        "timed_out": False,
                        "wall_ms": round((time.monotonic() - t0) * 1000, 3),
                        "cpu_ms": round((self.cpu_seconds() - cpu0) * 1000, 3),
                        "max_rss_kb": _peak_rss_kb(self.pid),
                    }
                if not msg:  # it closed its end: wait for its exit
                    select.select([self.pidfd], [], [], max(deadline - time.monotonic(), 0))
        _, wstatus, ru = os.wait4(self.pid, 0)
        self.close()
        return {
            "exit": os.waitstatus_to_exitcode(wstatus),
            "timed_out": timed_out,
            "wall_ms": round((time.monotonic() - t0) * 1000, 3),
            "cpu_ms": round((ru.ru_utime + ru.ru_stime - cpu0) * 1000, 3),
            "max_rss_kb": ru.ru_maxrss,
        }

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        self.close()

    def close(self) -> None:
        for fd in (self.go_w, self.done_r, self.pidfd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _retire(kept: _Call, mode: str) -> None:
    kept.kill()
    if mode == "sandbox":
        wipe_tmp()


def _peak_rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


# --- one call (the forked child) -------------------------------------------------------------


def call(mode: str, go_r: int, done_w: int) -> None:
    code = 0
    try:
        os.setsid()
        seccomp_bpf.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        # everything that needs no request is done before it arrives
        program = seccomp_bpf.call_filter(os.getpid()) if mode == "sandbox" else b""
        if os.read(go_r, 1) != b"g":
            os._exit(0)
        header, blob = wire.read_frame(0, 1 << 40)
        keep = bool(header.get("keep"))
        limits = header["limits"]
        mapped = _map_tables(header)  # before the rlimits: inputs do not count as the UDF's
        req_fd = os.dup(0) if keep else -1
        resp_fd = os.dup(1)
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        _set_rlimits(limits, keep)
        if program:
            seccomp_bpf.install(program)
        while True:
            t0 = time.monotonic()
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            out_header, blobs = run(header, blob, limits, mapped)
            del header, blob, mapped
            ru = resource.getrusage(resource.RUSAGE_SELF)
            cpu = ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime
            out_header["stats"] = {
                "wall_ms": round((time.monotonic() - t0) * 1000, 3),
                "cpu_ms": round(cpu * 1000, 3),
                "max_rss_kb": ru.ru_maxrss,
            }
            wire.write_all(resp_fd, wire.encode(out_header, blobs))
            if not keep:
                break
            del out_header, blobs
            gc.collect()
            # answered; stay for the next call of the same key, if the zygote sends one
            os.write(done_w, b"d")
            if os.read(go_r, 1) != b"g":
                break
            header, blob = wire.read_frame(req_fd, 1 << 40)
            limits = header["limits"]
            mapped = _map_tables(header)
    except BaseException:  # the worker's own failure: no frame, the host sees exit code 70
        code = 70
    os._exit(code)


def _map_tables(header: dict[str, Any]) -> dict[str, Any]:
    """Tables handed over as files in the inbox, mapped read-only (zero-copy)."""
    if not any(len(t) > 2 for t in header["tables"]):
        return {}
    import pyarrow as pa
    import pyarrow.ipc as ipc

    return {
        t[0]: ipc.open_stream(pa.memory_map(t[2], "r")).read_all()
        for t in header["tables"]
        if len(t) > 2
    }


def _set_rlimits(limits: dict[str, Any], keep: bool = False) -> None:
    with open("/proc/self/statm") as f:
        vsz = int(f.read().split()[0]) * PAGE
    cap = vsz + int(limits["memory_mb"]) * 1024 * 1024
    # a kept call's address space is set per call by the zygote (soft; the call may not)
    space_hard = resource.RLIM_INFINITY if keep else cap
    for res, value, hard in (
        (resource.RLIMIT_AS, cap, space_hard),
        (resource.RLIMIT_DATA, cap, space_hard),
        (resource.RLIMIT_FSIZE, int(limits["max_file_bytes"]), None),
        (resource.RLIMIT_CORE, 0, None),
        (resource.RLIMIT_NOFILE, 64, None),
        (resource.RLIMIT_MEMLOCK, 0, None),
        (resource.RLIMIT_MSGQUEUE, 0, None),
    ):
        resource.setrlimit(res, (value, value if hard is None else hard))
    # CPU: SIGXCPU at the limit (an unambiguous cause), SIGKILL a second later if the UDF
    # ignores SIGXCPU; the call filter forbids raising either. A kept call's hard limit leaves
    # room for the zygote to move the soft one on per call (its wall limit still bounds each).
    cpu = int(limits["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu * KEPT_CPU_CALLS + 1 if keep else cpu + 1))


class _CappedIO(io.StringIO):
    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def write(self, s: str) -> int:
        room = self.cap - self.tell()
        if room > 0:
            super().write(s[:room])
        return len(s)


def run(
    header: dict[str, Any],
    blob: bytes | bytearray,
    limits: dict[str, Any],
    mapped: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[Any]]:
    """Compile and call the UDF; return the response (header, blobs). Never raises."""
    logs = _CappedIO(int(limits["max_log_bytes"]))
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = logs
    try:
        header_out, blobs = _run(header, blob, int(limits["max_output_bytes"]), mapped or {})
    except _Fail as fail:
        header_out, blobs = fail.header, []
    except MemoryError:
        header_out, blobs = _error("memory", "MemoryError: past the memory limit"), []
    finally:
        sys.stdout, sys.stderr = saved
    header_out["logs"] = logs.getvalue()
    return header_out, blobs


class _Fail(Exception):
    def __init__(self, header: dict[str, Any]) -> None:
        self.header = header


def _error(cause: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "cause": cause, "message": message, **extra}


def _user_exc(cause: str, exc: BaseException, filename: str) -> _Fail:
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename
    ] or traceback.extract_tb(exc.__traceback__)[-1:]
    tb = "Traceback (most recent call last):\n" + "".join(traceback.format_list(frames[-20:]))
    tb += "".join(traceback.format_exception_only(type(exc), exc))
    line = frames[-1].lineno if frames and frames[-1].filename == filename else None
    first = traceback.format_exception_only(type(exc), exc)[-1].strip()
    if isinstance(exc, MemoryError):
        cause = "memory"
    return _Fail(
        _error(cause, first[:500], traceback=tb[-8000:], exc_type=type(exc).__name__, line=line)
    )


def _run(
    header: dict[str, Any], blob: bytes | bytearray, max_out: int, mapped: dict[str, Any]
) -> tuple[dict[str, Any], list[Any]]:
    filename = header.get("filename") or "udf.py"
    source = header["source"]
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        code = compile(source, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        msg = f"{type(exc).__name__}: {getattr(exc, 'msg', exc)}"
        raise _Fail(_error("syntax", msg, exc_type=type(exc).__name__, line=line)) from None
    module: dict[str, Any] = {"__name__": "udf", "__file__": filename, "__builtins__": __builtins__}
    try:
        exec(code, module)
    except ImportError as exc:
        raise _user_exc("import", exc, filename) from None
    except BaseException as exc:
        raise _user_exc("raised", exc, filename) from None
    entry = header["entry"]
    fn = module.get(entry)
    if not callable(fn):
        raise _Fail(_error("missing_entry", f"the module defines no function {entry!r}"))

    kind = header["kind"]
    import pyarrow as pa
    import pyarrow.ipc as ipc

    if kind == "function":
        arg: Any = header["input"]
    else:
        inline = [t for t in header["tables"] if len(t) == 2]
        views = wire.split_blobs(blob, [t[1] for t in inline])
        loaded = {
            t[0]: ipc.open_stream(pa.py_buffer(v)).read_all()
            for t, v in zip(inline, views, strict=True)
        }
        tables = {t[0]: mapped[t[0]] if len(t) > 2 else loaded[t[0]] for t in header["tables"]}
        arg = tables if kind == "transform" else next(iter(tables.values()))
    try:
        value = fn(arg)
    except BaseException as exc:
        raise _user_exc("raised", exc, filename) from None
    del arg

    if kind == "transform":
        if isinstance(value, pa.RecordBatch):
            value = pa.Table.from_batches([value])
        if not isinstance(value, pa.Table):
            raise _Fail(
                _error("wrong_shape", f"a transform returns a pyarrow.Table, not {_tname(value)}")
            )
        sink = pa.BufferOutputStream()
        with ipc.new_stream(sink, value.schema) as writer:
            writer.write_table(value)
        out = sink.getvalue()
        _check_size(out.size, max_out)
        return {"ok": True, "part": "table"}, [out]
    if kind == "alert":
        if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
            raise _Fail(
                _error("wrong_shape", f"an alert returns a list of dicts, not {_tname(value)}")
            )
        text = _json(value, "an event")
        _check_size(len(text), max_out)
        return {"ok": True, "part": "events"}, [text]
    text = _json(value, "the return value")
    _check_size(len(text), max_out)
    return {"ok": True, "part": "value"}, [text]


def _json(value: Any, what: str) -> bytes:
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise _Fail(_error("not_serializable", f"{what} is not JSON: {exc}")) from None


def _check_size(n: int, cap: int) -> None:
    if n > cap:
        raise _Fail(_error("output_too_large", f"the output is {n} bytes, past the cap of {cap}"))


def _tname(value: Any) -> str:
    return (
        type(value).__module__.replace("builtins", "").strip(".")
        + ("." if type(value).__module__ != "builtins" else "")
        + type(value).__qualname__
    )


if __name__ == "__main__":
    zygote(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
