"""What a UDF call came to: its exit status and answer frame turned into a ``UdfResult``, or
the ``UdfError`` naming the cause (shared by the local runtime and the Lambda invoker)."""

from __future__ import annotations

import json
import signal
from typing import Any

from trace_core.errors import UdfError
from trace_core.udf.payload import UdfInvocationPayload, UdfResult, UdfStats
from trace_core.udf.sandbox import wire

#: Room for the answer's header and logs on top of ``max_output_bytes``.
FRAME_OVERHEAD = 1024 * 1024


def interpret(
    payload: UdfInvocationPayload,
    status: dict[str, Any] | None,
    out: bytes,
    runtime: str = "local",
) -> UdfResult:
    """Turn a call's response bytes (and its exit status, when the call ended without a
    whole answer) into a result, or raise the ``UdfError``."""
    limits = payload.limits
    if status is None:  # a whole frame came first: the call answered, its exit is routine
        status = {"exit": 0}
    code = int(status.get("exit", -1))
    stats = UdfStats(
        wall_ms=float(status.get("wall_ms", 0.0)),
        cpu_ms=float(status.get("cpu_ms", 0.0)),
        max_rss_kb=int(status.get("max_rss_kb", 0)),
        output_bytes=len(out),
    )
    if status.get("timed_out"):
        raise UdfError(
            "wall_time", f"still running after its wall limit of {limits.wall_seconds} s"
        )
    if code < 0:
        sig = -code
        # SIGXCPU at the soft limit; SIGKILL at the hard one (soft + 1 s) if it ignored
        # SIGXCPU. rusage may read ~10% below the kernel's CPU timer, hence the margin.
        if sig == signal.SIGXCPU or (
            sig == signal.SIGKILL and stats.cpu_ms >= limits.cpu_seconds * 1000 * 0.8
        ):
            raise UdfError("cpu_time", f"used its CPU limit of {limits.cpu_seconds} s")
        if sig == signal.SIGSYS:
            raise UdfError(
                "sandbox_violation",
                "made a forbidden system call (fork, exec, sockets, ptrace, mount, namespaces, "
                "setuid, signals to other processes, ...) and was killed",
            )
        raise UdfError("crashed", f"the UDF's process died of {signal.Signals(sig).name}")
    if len(out) > limits.max_output_bytes + FRAME_OVERHEAD + limits.max_log_bytes * 4:
        raise UdfError("output_too_large", f"wrote more than {limits.max_output_bytes} bytes")
    header, blob = _parse_response(out, code)
    if not header.get("ok"):
        raise UdfError(
            str(header.get("cause", "raised")),
            str(header.get("message", "")),
            user_traceback=header.get("traceback"),
            exc_type=header.get("exc_type"),
            line=header.get("line"),
        )
    logs = str(header.get("logs", ""))
    own = header.get("stats")
    if isinstance(own, dict):  # measured by the call itself (no exit status on the fast path)
        stats = UdfStats(
            wall_ms=float(own.get("wall_ms", 0.0)),
            cpu_ms=float(own.get("cpu_ms", 0.0)),
            max_rss_kb=int(own.get("max_rss_kb", 0)),
            output_bytes=len(out),
        )
    part = header.get("part")
    if part == "table":
        return UdfResult(table=blob, logs=logs, stats=stats, runtime=runtime)
    try:
        decoded = json.loads(blob)
    except ValueError:
        raise UdfError("bad_output", "the result is not JSON") from None
    if part == "events" and payload.kind == "alert" and isinstance(decoded, list):
        return UdfResult(events=decoded, logs=logs, stats=stats, runtime=runtime)
    if part == "value" and payload.kind == "function":
        return UdfResult(value=decoded, logs=logs, stats=stats, runtime=runtime)
    raise UdfError("bad_output", f"the result part {part!r} does not fit a {payload.kind} UDF")


def _parse_response(out: bytes, code: int) -> tuple[dict[str, Any], bytes]:
    """Split the one response frame a call wrote; anything else is ``bad_output``."""
    if not out:
        if code == 0:
            raise UdfError("bad_output", "the UDF's process exited before it answered")
        raise UdfError("crashed", f"the UDF's process exited with code {code} before it answered")
    prefix = wire.PREFIX
    view = memoryview(out)
    try:
        if len(out) < prefix.size:
            raise wire.FrameError("short frame")
        magic, hlen, blen = prefix.unpack(view[: prefix.size])
        if magic != wire.MAGIC or prefix.size + hlen + blen != len(out):
            raise wire.FrameError("frame length does not match")
        header = json.loads(bytes(view[prefix.size : prefix.size + hlen]))
        if not isinstance(header, dict):
            raise wire.FrameError("header is not an object")
    except (wire.FrameError, ValueError):
        raise UdfError("bad_output", "the UDF wrote something other than its result") from None
    return header, bytes(view[prefix.size + hlen :])
