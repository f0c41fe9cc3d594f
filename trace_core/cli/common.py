"""What every ``trace-lite`` command module shares: the consoles, the error wrapper, a runtime."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from rich.console import Console

from trace_core.errors import ConfigError, TraceError
from trace_core.runtime import Runtime
from trace_core.settings import load_settings

F = TypeVar("F", bound=Callable[..., Any])
console = Console()
err_console = Console(stderr=True)


def handle_errors(fn: F) -> F:
    """Turn Trace errors into one line on stderr and an exit code (2 for bad input, else 1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TraceError as exc:
            err_console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
            sys.exit(2 if isinstance(exc, ConfigError) else 1)

    return wrapper  # type: ignore[return-value]


def runtime() -> Runtime:
    return Runtime(load_settings())
