"""The local UDF runtime's contract on the real sandbox: functions, transforms and alerts,
limits and their overrides, concurrency, a runtime crash (retryable), fail-closed start-up,
and the unsandboxed mode's warning."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pytest

from trace_core.errors import RetryableError, SandboxUnavailable, UdfError, UdfRuntimeError
from trace_core.settings import Settings
from trace_core.udf import (
    LocalSandboxInvoker,
    RuntimeInvoker,
    UdfInvocationPayload,
    UdfLimits,
    invoker_from_settings,
    ipc_to_table,
    table_to_ipc,
)

ipc = table_to_ipc
from_ipc = ipc_to_table


@pytest.fixture(scope="module")
def invoker() -> Any:
    with LocalSandboxInvoker(pool_size=2) as inv:
        yield inv


def test_function_returns_json_logs_and_stats(invoker: LocalSandboxInvoker) -> None:
    assert isinstance(invoker, RuntimeInvoker)
    src = "import json\ndef main(x):\n    print('got', x)\n    return {'sum': sum(x['n']), 'echo': x}\n"
    res = invoker.invoke(UdfInvocationPayload(source=src, input={"n": [1, 2, 3]}))
    assert res.value == {"sum": 6, "echo": {"n": [1, 2, 3]}}
    assert res.logs == "got {'n': [1, 2, 3]}\n"
    assert res.runtime == "local" and res.stats.output_bytes > 0
    other = invoker.invoke(UdfInvocationPayload(source=src, entry="main", input={"n": []}))
    assert other.value["sum"] == 0


def test_named_entry_and_default_input(invoker: LocalSandboxInvoker) -> None:
    src = "def main(x):\n    return 'main'\ndef other(x):\n    return ['other', x]\n"
    assert invoker.invoke(UdfInvocationPayload(source=src, entry="other")).value == ["other", None]


def test_transform_takes_tables_and_returns_a_table(invoker: LocalSandboxInvoker) -> None:
    transfers = pa.table({"token": ["a", "b", "a", "c"], "amount": [1, 2, 3, 4]})
    tokens = pa.table({"token": ["a", "b"], "symbol": ["AAA", "BBB"]})
    src = """
import pyarrow as pa
import pyarrow.compute as pc

def main(tables):
    volume = tables['transfers'].group_by('token').aggregate([('amount', 'sum')])
    return volume.join(tables['tokens'], 'token', join_type='inner').sort_by('token')
"""
    res = invoker.invoke(
        UdfInvocationPayload(
            kind="transform",
            source=src,
            tables={"transfers": ipc(transfers), "tokens": ipc(tokens)},
        )
    )
    out = from_ipc(res.table or b"")
    assert out.to_pydict() == {"token": ["a", "b"], "amount_sum": [4, 2], "symbol": ["AAA", "BBB"]}


def test_alert_takes_rows_and_returns_events(invoker: LocalSandboxInvoker) -> None:
    rows = pa.table({"block_number": [10, 11, 12], "value": [5, 500, 7]})
    src = """
def main(rows):
    return [
        {'dedupe_key': f"big-{r['block_number']}", 'block_number': r['block_number'], 'value': r['value']}
        for r in rows.to_pylist() if r['value'] > 100
    ]
"""
    res = invoker.invoke(UdfInvocationPayload(kind="alert", source=src, tables={"rows": ipc(rows)}))
    assert res.events == [{"dedupe_key": "big-11", "block_number": 11, "value": 500}]


def test_payload_contract_is_checked() -> None:
    with pytest.raises(ValueError, match="exactly one table"):
        UdfInvocationPayload(kind="alert", source="", tables={})
    with pytest.raises(ValueError, match="does not match"):
        UdfInvocationPayload(source="x", bundle_sha256="0" * 64)
    with pytest.raises(ValueError):
        UdfInvocationPayload(source="x", entry="not an identifier")


def test_memory_limit_and_its_override(invoker: LocalSandboxInvoker) -> None:
    src = "def main(x):\n    return len(bytearray(200 * 1024 * 1024))\n"
    with pytest.raises(UdfError) as info:
        invoker.invoke(UdfInvocationPayload(source=src))  # default 128 MB
    assert info.value.cause == "memory"
    big = UdfLimits(memory_mb=512)
    assert invoker.invoke(UdfInvocationPayload(source=src, limits=big)).value == 200 * 1024 * 1024


def test_wall_limit_override_and_output_cap(invoker: LocalSandboxInvoker) -> None:
    src = "import time\ndef main(x):\n    time.sleep(x)\n    return 'x' * 5000\n"
    with pytest.raises(UdfError) as info:
        invoker.invoke(
            UdfInvocationPayload(source=src, input=2, limits=UdfLimits(wall_seconds=0.5))
        )
    assert info.value.cause == "wall_time"
    with pytest.raises(UdfError) as info:
        invoker.invoke(
            UdfInvocationPayload(source=src, input=0, limits=UdfLimits(max_output_bytes=4096))
        )
    assert info.value.cause == "output_too_large"
    assert len(invoker.invoke(UdfInvocationPayload(source=src, input=0)).value) == 5000


def test_concurrent_calls_share_the_pool(invoker: LocalSandboxInvoker) -> None:
    src = "def main(x):\n    return x * x\n"
    with ThreadPoolExecutor(4) as pool:
        got = list(
            pool.map(
                lambda i: invoker.invoke(UdfInvocationPayload(source=src, input=i)).value, range(40)
            )
        )
    assert got == [i * i for i in range(40)]


def test_a_dead_worker_is_a_retryable_runtime_error_and_is_replaced() -> None:
    with LocalSandboxInvoker(pool_size=1) as inv:
        inv.start()
        worker = inv._idle[0]
        errors: list[BaseException] = []

        def slow() -> None:
            try:
                inv.invoke(
                    UdfInvocationPayload(source="import time\ndef main(x):\n    time.sleep(20)\n")
                )
            except BaseException as exc:  # noqa: BLE001  (collected for the assert)
                errors.append(exc)

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.5)  # let the call start before the runtime dies under it
        os.killpg(worker.proc.pid, signal.SIGKILL)
        t.join(30)
        assert len(errors) == 1 and isinstance(errors[0], UdfRuntimeError)
        assert isinstance(errors[0], RetryableError)
        assert inv.invoke(UdfInvocationPayload(source="def main(x):\n    return 7\n")).value == 7


def test_fails_closed_without_a_working_bwrap(tmp_path: Any) -> None:
    with pytest.raises(SandboxUnavailable, match="not an executable"):
        LocalSandboxInvoker(bwrap=tmp_path / "missing").invoke(UdfInvocationPayload(source=""))
    broken = tmp_path / "bwrap"
    broken.write_text(
        "#!/bin/sh\necho 'bwrap: Creating new namespace failed: Operation not permitted' >&2\nexit 1\n"
    )
    broken.chmod(0o755)
    with pytest.raises(SandboxUnavailable, match="Creating new namespace failed"):
        LocalSandboxInvoker(bwrap=broken).invoke(UdfInvocationPayload(source=""))


def test_unsandboxed_mode_is_explicit_and_warns_every_call(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    inv = invoker_from_settings(Settings(home=tmp_path, udf_runtime="unsandboxed"))
    try:
        with caplog.at_level(logging.WARNING, logger="trace_core.udf.local"):
            for i in range(2):
                assert (
                    inv.invoke(
                        UdfInvocationPayload(source="def main(x):\n    return x\n", input=i)
                    ).value
                    == i
                )
        assert [r.message for r in caplog.records].count(
            "UDF runs UNSANDBOXED (TRACE_UDF_RUNTIME=unsandboxed): trusted code only"
        ) == 2
        assert inv.name == "unsandboxed"
    finally:
        inv.close()
    default = invoker_from_settings(Settings(home=tmp_path))
    assert isinstance(default, LocalSandboxInvoker) and not default.unsandboxed


def test_workers_outlive_the_thread_that_started_them() -> None:
    """bwrap's --die-with-parent follows the starting thread: a worker started for a caller's
    short-lived thread must not die with it (workers start on the invoker's own thread)."""
    import subprocess

    src = "def main(x):\n    return x\n"
    with LocalSandboxInvoker(pool_size=1) as inv:
        t = threading.Thread(target=lambda: inv.invoke(UdfInvocationPayload(source=src, input=1)))
        t.start()
        t.join()
        worker = inv._idle[0]
        with pytest.raises(subprocess.TimeoutExpired):
            worker.proc.wait(timeout=0.5)  # with the starting thread gone, bwrap got SIGKILL
        assert inv.invoke(UdfInvocationPayload(source=src, input=2)).value == 2
        assert inv._idle[0] is worker
