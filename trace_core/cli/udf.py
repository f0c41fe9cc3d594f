"""``trace-lite udf invoke``: run one UDF function once, in the configured runtime.

The value is printed as JSON on stdout (exit 0). Any failure prints one line on stderr naming
the cause (``error: udf <cause>: ...``), then the function's own traceback when there is one;
never a traceback of Trace's. Exit codes: 1 the UDF failed, 2 bad arguments, 3 the sandbox is
unavailable, 4 the runtime failed (retryable).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from trace_core.errors import SandboxUnavailable, TraceError, UdfError, UdfRuntimeError


def _fail(message: str, code: int, detail: str | None = None) -> None:
    sys.stderr.write(f"error: {message}\n")
    if detail:
        sys.stderr.write(detail.rstrip("\n") + "\n")
    sys.exit(code)


@click.group()
def udf() -> None:
    """User-defined functions (see docs/udf.md)."""


@udf.command()
@click.option("--file", "path", required=True, help="The UDF's Python file")
@click.option("--entry", default="main", show_default=True, help="The function to call")
@click.option("--input", "input_json", default="null", show_default=True, help="JSON argument")
@click.option("--wall-seconds", type=float, default=None, help="Override the wall-time limit")
@click.option("--cpu-seconds", type=int, default=None, help="Override the CPU-time limit")
@click.option("--memory-mb", type=int, default=None, help="Override the memory limit")
def invoke(
    path: str,
    entry: str,
    input_json: str,
    wall_seconds: float | None,
    cpu_seconds: int | None,
    memory_mb: int | None,
) -> None:
    """Run FILE's ENTRY(input) in the UDF sandbox and print its value as JSON."""
    from pydantic import ValidationError

    from trace_core.settings import load_settings
    from trace_core.udf import UdfInvocationPayload, UdfLimits, invoker_from_settings

    try:
        source = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}", 2)
    try:
        value = json.loads(input_json)
    except ValueError as exc:
        _fail(f"--input is not JSON: {exc}", 2)
    overrides: dict[str, Any] = {
        k: v
        for k, v in (
            ("wall_seconds", wall_seconds),
            ("cpu_seconds", cpu_seconds),
            ("memory_mb", memory_mb),
        )
        if v is not None
    }
    try:
        payload = UdfInvocationPayload(
            kind="function",
            entry=entry,
            source=source,
            filename=Path(path).name,
            input=value,
            limits=UdfLimits(**overrides),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        _fail(f"{where}: {first['msg']}", 2)
    try:
        settings = load_settings()
        invoker = invoker_from_settings(settings)
        if settings.udf_runtime == "unsandboxed":
            sys.stderr.write(
                "warning: TRACE_UDF_RUNTIME=unsandboxed: the function runs WITHOUT the sandbox\n"
            )
        try:
            result = invoker.invoke(payload)
        finally:
            invoker.close()
    except UdfError as exc:
        where = f" ({payload.filename} line {exc.line})" if exc.line else ""
        _fail(f"{exc}{where}", 1, exc.user_traceback)
    except SandboxUnavailable as exc:
        _fail(f"sandbox unavailable: {exc}", 3)
    except UdfRuntimeError as exc:
        _fail(f"udf runtime: {exc} (retryable)", 4)
    except TraceError as exc:
        _fail(str(exc), 2)
    except Exception as exc:  # the CLI's boundary: one line, never Trace's traceback
        _fail(f"internal: {type(exc).__name__}: {exc}", 4)
    if result.logs:
        sys.stderr.write(result.logs if result.logs.endswith("\n") else result.logs + "\n")
    click.echo(json.dumps(result.value))
