"""Warm call processes on the real sandbox (``UdfInvocationPayload.reuse_scope``): calls of one
scope, code and limits run one after another in the same process, every call still runs the
module afresh and keeps a fresh call's CPU, wall and memory limits, and nothing is shared
across scopes, code or limits (docs/udf.md, Warm calls)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from trace_core.errors import UdfError
from trace_core.udf import LocalSandboxInvoker, UdfInvocationPayload, UdfLimits

# the call's pid, and whether a file its earlier call left in /tmp is still there
PID = """
import os
N = [0]
def main(x):
    N[0] += 1
    seen = os.path.exists('/tmp/mark')
    open('/tmp/mark', 'w').close()
    return [os.getpid(), N[0], seen]
"""
SPIN = """
import os, time
def main(seconds):
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass
    return [seconds, os.getpid()]
"""
ALLOC = "import os\ndef main(mb):\n    b = bytearray(mb * 1024 * 1024)\n    return [len(b), os.getpid()]\n"


@pytest.fixture(scope="module")
def invoker() -> Iterator[LocalSandboxInvoker]:
    with LocalSandboxInvoker(pool_size=1) as inv:
        yield inv


def call(inv: LocalSandboxInvoker, source: str, scope: str | None, x: object = None, **kw: object):
    limits = UdfLimits(**kw)  # type: ignore[arg-type]
    return inv.invoke(
        UdfInvocationPayload(source=source, input=x, reuse_scope=scope, limits=limits)
    ).value


def test_same_scope_reuses_the_process_and_runs_the_module_afresh(
    invoker: LocalSandboxInvoker,
) -> None:
    first = call(invoker, PID, "job-a")
    again = call(invoker, PID, "job-a")
    assert again[0] == first[0]  # the same warm process
    assert again[1] == 1  # module globals start over: the module runs again per call
    assert again[2] is True  # its own /tmp is its own between its calls


def test_other_scope_code_limits_or_none_get_a_fresh_process(invoker: LocalSandboxInvoker) -> None:
    a = call(invoker, PID, "job-a")[0]
    b = call(invoker, PID, "job-b")
    assert b[0] != a and b[2] is False  # another scope: new process, /tmp wiped
    c = call(invoker, PID + "\n# v2\n", "job-b")
    assert c[0] != b[0] and c[2] is False  # other code
    d = call(invoker, PID + "\n# v2\n", "job-b", memory_mb=256)
    assert d[0] != c[0]  # other limits
    e = call(invoker, PID, None)
    f = call(invoker, PID, None)
    assert e[0] != f[0] and not e[2] and not f[2]  # no scope: a fresh process every call


def test_each_reused_call_gets_its_own_cpu_budget(invoker: LocalSandboxInvoker) -> None:
    # three calls of 0.6 s each in a 1 s budget: each passes on its own budget
    runs = [call(invoker, SPIN, "cpu", 0.6, cpu_seconds=1) for _ in range(3)]
    assert [r[0] for r in runs] == [0.6] * 3 and len({r[1] for r in runs}) == 1
    with pytest.raises(UdfError) as err:
        call(invoker, SPIN, "cpu", 5, cpu_seconds=1, wall_seconds=10)
    assert err.value.cause == "cpu_time"
    assert call(invoker, SPIN, "cpu", 0.1, cpu_seconds=1)[1] != runs[0][1]  # a fresh one next


def test_wall_limit_kills_a_reused_call(invoker: LocalSandboxInvoker) -> None:
    pid = call(invoker, PID, "wall")[0]
    assert call(invoker, PID, "wall")[0] == pid
    loop = "import time\ndef main(x):\n    time.sleep(x)\n    return x\n"
    assert call(invoker, loop, "wall2", 0, wall_seconds=0.5) == 0
    with pytest.raises(UdfError) as err:
        call(invoker, loop, "wall2", 5, wall_seconds=0.5)
    assert err.value.cause == "wall_time"


def test_reused_calls_keep_a_fresh_calls_memory_room(invoker: LocalSandboxInvoker) -> None:
    # 100 MB of 128 fits every time, though earlier calls' memory may not all be returned
    runs = [call(invoker, ALLOC, "mem", 100) for _ in range(4)]
    assert [r[0] for r in runs] == [100 * 1024 * 1024] * 4 and len({r[1] for r in runs}) == 1
    with pytest.raises(UdfError) as err:
        call(invoker, ALLOC, "mem", 400)
    assert err.value.cause == "memory"
