"""The hostile suite: UDFs that try to break out, hog the box or lie, run against the REAL
sandbox (bubblewrap + seccomp + rlimits, warm workers). Each asserts the specific cause, and
the module's last test checks the warm worker survived them all."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from trace_core.errors import UdfError
from trace_core.udf import LocalSandboxInvoker, UdfInvocationPayload, UdfLimits

FAST = {"wall_seconds": 2.0, "cpu_seconds": 2}  # for UDFs meant to hit a limit
ROOMY = {"wall_seconds": 30.0, "cpu_seconds": 10}  # for calls that must succeed on a busy box


@pytest.fixture(scope="module")
def invoker() -> Any:
    with LocalSandboxInvoker(pool_size=1) as inv:
        inv.start()
        yield inv


def _call(
    inv: LocalSandboxInvoker,
    source: str,
    *,
    kind: str = "function",
    input: Any = None,
    tables: dict[str, bytes] | None = None,
    scope: str | None = None,
    **limits: Any,
) -> Any:
    payload = UdfInvocationPayload(
        kind=kind,  # type: ignore[arg-type]
        source=textwrap.dedent(source),
        input=input,
        tables=tables or {},
        limits=UdfLimits(**{**ROOMY, **limits}),
        reuse_scope=scope,
    )
    return inv.invoke(payload)


def _fails(inv: LocalSandboxInvoker, source: str, cause: str, **kw: Any) -> UdfError:
    with pytest.raises(UdfError) as info:
        _call(inv, source, **{**FAST, **kw})
    assert info.value.cause == cause, f"{info.value.cause}: {info.value}"
    return info.value


def _ipc_one_row() -> bytes:
    import pyarrow as pa

    table = pa.table({"x": [1]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


# --- (cause, source) pairs: the UDF's own bugs and lies -------------------------------------

SIMPLE: list[tuple[str, str, str]] = [
    ("does_not_parse", "syntax", "def main(:\n    pass\n"),
    ("null_byte_source", "syntax", "x = 1\0\n"),
    ("lacks_entry", "missing_entry", "def other(x):\n    return x\n"),
    ("entry_not_callable", "missing_entry", "main = 3\n"),
    ("raises", "raised", "def main(x):\n    raise ValueError('boom')\n"),
    ("raises_at_import", "raised", "raise RuntimeError('at import')\n"),
    ("sys_exit", "raised", "import sys\ndef main(x):\n    sys.exit(3)\n"),
    ("unbounded_recursion", "raised", "def main(x):\n    return main(x)\n"),
    ("imports_numpy", "import", "import numpy\ndef main(x):\n    return 1\n"),
    ("imports_trace_core", "import", "import trace_core\ndef main(x):\n    return 1\n"),
    ("returns_a_set", "not_serializable", "def main(x):\n    return {1, 2}\n"),
    ("returns_nan", "not_serializable", "def main(x):\n    return float('nan')\n"),
    ("returns_an_object", "not_serializable", "def main(x):\n    return object()\n"),
    (
        "huge_output",
        "output_too_large",
        "def main(x):\n    return 'x' * (2 * 1024 * 1024)\n",
    ),
    ("infinite_loop", "wall_time", "def main(x):\n    while True:\n        pass\n"),
    ("loop_at_import", "wall_time", "while True:\n    pass\n"),
    ("sleeps_forever", "wall_time", "import time\ndef main(x):\n    time.sleep(3600)\n"),
    ("allocates_gigabytes", "memory", "def main(x):\n    return len(bytearray(4 << 30))\n"),
    (
        "grows_until_killed",
        "memory",
        "def main(x):\n    keep = []\n    while True:\n        keep.append(bytearray(1 << 20))\n",
    ),
    (
        "arrow_allocates_gigabytes",
        "memory",
        "import pyarrow as pa\ndef main(x):\n    return pa.allocate_buffer(3 << 30).size\n",
    ),
    ("os_fork", "sandbox_violation", "import os\ndef main(x):\n    return os.fork()\n"),
    (
        "fork_bomb",
        "sandbox_violation",
        "import os\ndef main(x):\n    while True:\n        os.fork()\n",
    ),
    (
        "subprocess",
        "sandbox_violation",
        "import subprocess\ndef main(x):\n    return subprocess.run(['id'], capture_output=True).stdout.decode()\n",
    ),
    (
        "execv_shell",
        "sandbox_violation",
        "import os\ndef main(x):\n    os.execv('/bin/sh', ['sh', '-c', 'id'])\n",
    ),
    (
        "tcp_socket",
        "sandbox_violation",
        "import socket\ndef main(x):\n    s = socket.socket()\n    s.connect(('1.1.1.1', 80))\n",
    ),
    (
        "udp_socket_ipv6",
        "sandbox_violation",
        "import socket\ndef main(x):\n    socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n",
    ),
    (
        "netlink_socket",
        "sandbox_violation",
        "import socket\ndef main(x):\n    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)\n",
    ),
    (
        "kill_pid_1",
        "sandbox_violation",
        "import os, signal\ndef main(x):\n    os.kill(1, signal.SIGKILL)\n",
    ),
    (
        "kill_parent",
        "sandbox_violation",
        "import os, signal\ndef main(x):\n    os.kill(os.getppid(), signal.SIGKILL)\n",
    ),
    (
        "kill_everyone",
        "sandbox_violation",
        "import os, signal\ndef main(x):\n    os.kill(-1, signal.SIGKILL)\n",
    ),
    ("setuid_root", "sandbox_violation", "import os\ndef main(x):\n    os.setuid(0)\n"),
    ("chroot", "sandbox_violation", "import os\ndef main(x):\n    os.chroot('/tmp')\n"),
    (
        "ctypes_ptrace",
        "sandbox_violation",
        "import ctypes\ndef main(x):\n    return ctypes.CDLL(None).ptrace(0, 0, 0, 0)\n",
    ),
    (
        "ctypes_mount",
        "sandbox_violation",
        "import ctypes\ndef main(x):\n    return ctypes.CDLL(None).mount(b'none', b'/tmp', b'tmpfs', 0, None)\n",
    ),
    (
        "ctypes_unshare_userns",
        "sandbox_violation",
        "import ctypes\ndef main(x):\n    return ctypes.CDLL(None).unshare(0x10000000)\n",
    ),
    (
        "ctypes_raw_syscall_bpf",
        "sandbox_violation",
        "import ctypes\ndef main(x):\n    return ctypes.CDLL(None).syscall(321, 0, 0, 0)\n",
    ),
    (
        "ctypes_keyctl",
        "sandbox_violation",
        "import ctypes\ndef main(x):\n    return ctypes.CDLL(None).syscall(250, 0, 0, 0)\n",
    ),
    ("ctypes_segfault", "crashed", "import ctypes\ndef main(x):\n    return ctypes.string_at(0)\n"),
    ("os_exit_before_answer", "bad_output", "import os\ndef main(x):\n    os._exit(0)\n"),
    ("os_exit_nonzero", "crashed", "import os\ndef main(x):\n    os._exit(3)\n"),
    (
        "forges_the_result_channel",
        "bad_output",
        "import os\ndef main(x):\n"
        "    for fd in range(3, 20):\n"
        "        try:\n"
        "            os.write(fd, b'TUDF garbage')\n"
        "        except OSError:\n"
        "            pass\n"
        "    os._exit(0)\n",
    ),
]


@pytest.mark.parametrize("name,cause,source", SIMPLE, ids=[s[0] for s in SIMPLE])
def test_hostile_udf_fails_with_its_cause(
    invoker: LocalSandboxInvoker, name: str, cause: str, source: str
) -> None:
    extra: dict[str, Any] = {"max_output_bytes": 1024 * 1024} if name == "huge_output" else {}
    err = _fails(invoker, source, cause, **extra)
    if cause == "raised":
        assert err.exc_type and err.user_traceback
        assert "trace_core" not in err.user_traceback  # the user's frames only


@pytest.mark.parametrize("name,cause,source", SIMPLE, ids=[s[0] for s in SIMPLE])
def test_hostile_udf_fails_the_same_in_a_warm_process(
    invoker: LocalSandboxInvoker, name: str, cause: str, source: str
) -> None:
    """Twice in one reuse scope: where the first call's process survives its failure, the
    second runs in it (test_udf_reuse.py) and must fail the same way."""
    extra: dict[str, Any] = {"max_output_bytes": 1024 * 1024} if name == "huge_output" else {}
    for _ in range(2):
        _fails(invoker, source, cause, scope=f"hostile-{name}", **extra)


def test_cpu_burner_is_killed_at_its_cpu_limit(invoker: LocalSandboxInvoker) -> None:
    _fails(
        invoker,
        "def main(x):\n    while True:\n        pass\n",
        "cpu_time",
        wall_seconds=10,
        cpu_seconds=1,
    )


def test_reads_of_host_secrets_fail(invoker: LocalSandboxInvoker, tmp_path: Any) -> None:
    secret = tmp_path / "trace-home-secret.key"
    secret.write_text("TOPSECRET")
    for path in ("/etc/passwd", "/etc/shadow", str(secret), "/root/.bashrc", "/work"):
        err = _fails(invoker, f"def main(x):\n    return open({path!r}).read()\n", "raised")
        assert err.exc_type in ("FileNotFoundError", "PermissionError", "IsADirectoryError")


def test_environment_holds_no_secrets(
    invoker: LocalSandboxInvoker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACE_STATE_URL", "postgresql://u:hunter2@db/state")
    with LocalSandboxInvoker(pool_size=1) as fresh:  # started with the secret in Trace's env
        out = _call(
            fresh,
            """
            import os
            def main(x):
                seen = dict(os.environ)
                for pid in os.listdir('/proc'):
                    if pid.isdigit():
                        try:
                            seen[pid] = open(f'/proc/{pid}/environ', 'rb').read().decode()
                        except OSError as exc:
                            seen[pid] = type(exc).__name__
                return seen
            """,
        ).value
    assert "hunter2" not in str(out)
    assert not [k for k in out if k.startswith(("TRACE_", "AWS_"))]
    assert out["1"] in ("PermissionError", "")  # bwrap's own environment: empty or unreadable


def test_writes_outside_tmp_fail_and_tmp_is_private_per_call(invoker: LocalSandboxInvoker) -> None:
    for path in (
        "/usr/evil",
        "/evil",
        "/udf/runner/worker.py",
        "/udf/in/0.arrow",
        "/dev/shm/fill",
        "/proc/sys/kernel/hostname",
    ):
        err = _fails(invoker, f"def main(x):\n    open({path!r}, 'w').write('x')\n", "raised")
        assert err.exc_type in ("PermissionError", "OSError", "FileNotFoundError")
    src = "import os\ndef main(x):\n    open('/tmp/left', 'w').write('x')\n    os.mkdir('/tmp/d')\n    os.chmod('/tmp/d', 0)\n    return 1\n"
    assert _call(invoker, src).value == 1
    assert _call(invoker, "import os\ndef main(x):\n    return os.listdir('/tmp')\n").value == []


def test_the_inbox_holds_only_this_calls_inputs_read_only(invoker: LocalSandboxInvoker) -> None:
    import pyarrow as pa

    big = pa.table({"x": list(range(100_000))})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, big.schema) as w:
        w.write_table(big)
    data = sink.getvalue().to_pybytes()
    assert len(data) >= 256 * 1024  # handed over as a mapped file, not through the pipe
    src = "import os\ndef main(t):\n    open('/udf/in/0.arrow', 'r+b').write(b'x')\n"
    err = _fails(invoker, src, "raised", kind="alert", tables={"rows": data})
    assert err.exc_type in ("PermissionError", "OSError")
    src = "import os\ndef main(t):\n    return [{'files': os.listdir('/udf/in'), 'rows': t.num_rows}]\n"
    res = _call(invoker, src, kind="alert", tables={"rows": data})
    assert res.events == [{"files": ["0.arrow"], "rows": 100_000}]
    res = _call(invoker, "import os\ndef main(x):\n    return os.listdir('/udf/in')\n")
    assert res.value == []  # removed once the call is over


def test_file_size_limit(invoker: LocalSandboxInvoker) -> None:
    src = "def main(x):\n    open('/tmp/big', 'wb').write(b'x' * (2 << 20))\n"
    err = _fails(invoker, src, "raised", max_file_bytes=1 << 20)
    assert "File too large" in str(err)


def test_sees_only_its_own_processes_and_no_network(invoker: LocalSandboxInvoker) -> None:
    out = _call(
        invoker,
        """
        import os
        def main(x):
            pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
            ifaces = [ln.split(':')[0].strip() for ln in open('/proc/net/dev').readlines()[2:]]
            return {'pids': pids, 'uid': os.getuid(), 'ifaces': ifaces,
                    'root': sorted(os.listdir('/'))}
        """,
    ).value
    assert out["uid"] == 65534
    assert len(out["pids"]) <= 3  # bwrap, the warm worker, this call
    assert out["ifaces"] == ["lo"]
    assert set(out["root"]) <= {
        "bin",
        "dev",
        "etc",
        "lib",
        "lib64",
        "proc",
        "root",
        "sbin",
        "tmp",
        "udf",
        "usr",
    }


def test_no_data_of_a_previous_call_remains_in_memory(invoker: LocalSandboxInvoker) -> None:
    """Calls fork from a zygote that never holds a call's data: a call scanning its whole
    anonymous memory finds no trace of the previous call's input."""
    secret = "PREVIOUS-CALL-SECRET-" + "7Q" * 16
    assert _call(invoker, "def main(x):\n    return len(x * 3)\n", input=secret).value == 159
    hits = _call(
        invoker,
        """
        import ctypes, re, sys
        def main(prefix):
            needle = prefix.encode() + b'7Q' * 16
            own = id(needle) + sys.getsizeof(b'') - 1  # where needle's own bytes live
            pattern = re.compile(re.escape(needle))
            hits = []
            for line in open('/proc/self/maps').read().splitlines():
                fields = line.split()
                if not fields[1].startswith('rw') or (len(fields) > 5 and fields[5] != '[heap]'):
                    continue
                lo, hi = (int(a, 16) for a in fields[0].split('-'))
                view = memoryview((ctypes.c_char * (hi - lo)).from_address(lo)).cast('B')
                hits += [lo + m.start() for m in pattern.finditer(view) if lo + m.start() != own]
            return len(hits)
        """,
        input="PREVIOUS-CALL-SECRET-",
    ).value
    assert hits == 0


def test_cannot_raise_its_own_limits(invoker: LocalSandboxInvoker) -> None:
    src = "import resource\ndef main(x):\n    resource.setrlimit(resource.RLIMIT_CPU, (100, 100))\n"
    _fails(invoker, src, "sandbox_violation")
    src = "import resource\ndef main(x):\n    return resource.getrlimit(resource.RLIMIT_CPU)\n"
    assert _call(invoker, src, cpu_seconds=2).value == [2, 3]


def test_threads_are_capped_by_memory(invoker: LocalSandboxInvoker) -> None:
    src = (
        "import threading, time\ndef main(x):\n    ts = []\n    for _ in range(100000):\n"
        "        t = threading.Thread(target=time.sleep, args=(5,))\n        t.start()\n        ts.append(t)\n"
    )
    err = _fails(invoker, src, "raised", wall_seconds=10)
    assert err.exc_type == "RuntimeError"  # can't start new thread


def test_wrong_shapes_of_transform_and_alert(invoker: LocalSandboxInvoker) -> None:
    tables = {"rows": _ipc_one_row()}
    _fails(
        invoker,
        "def main(t):\n    return {'x': 1}\n",
        "wrong_shape",
        kind="transform",
        tables=tables,
    )
    _fails(
        invoker,
        "def main(rows):\n    return 'alert!'\n",
        "wrong_shape",
        kind="alert",
        tables=tables,
    )
    _fails(
        invoker, "def main(rows):\n    return [1, 2]\n", "wrong_shape", kind="alert", tables=tables
    )
    _fails(
        invoker,
        "def main(rows):\n    return [{'when': object()}]\n",
        "not_serializable",
        kind="alert",
        tables=tables,
    )


def test_input_too_large_is_refused_before_running(invoker: LocalSandboxInvoker) -> None:
    _fails(
        invoker,
        "def main(x):\n    return 1\n" + "#" * 5000,
        "input_too_large",
        max_input_bytes=4096,
    )
    err = _fails(
        invoker,
        "def main(x):\n    return 1\n",
        "input_too_large",
        input="x" * 8192,
        max_input_bytes=4096,
    )
    assert "JSON" in str(err)


def test_the_warm_worker_survived_the_suite(invoker: LocalSandboxInvoker) -> None:
    assert _call(invoker, "def main(x):\n    return x + 1\n", input=41).value == 42
