"""What every ``trace-lite`` command module shares: the consoles, the error wrapper, a runtime."""

from __future__ import annotations

import contextvars
import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
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


# ``--org NAME`` of the running command (or of ``trace-lite --org NAME ...``)
ORG: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_cli_org", default=None)


def org_option(fn: F) -> F:
    """Add ``--org NAME`` to a tenant command: its work runs as ``trace_tenant`` with that
    org (row-level security); without it, the deployment's own org (TRACE_ORG_ID, default
    the org named 'default')."""

    @click.option(
        "--org",
        "org_name",
        default=None,
        help="Org name: run as that org's tenant (default: the deployment's org)",
    )
    @functools.wraps(fn)
    def wrapper(*args: Any, org_name: str | None = None, **kwargs: Any) -> Any:
        if org_name is not None:
            ORG.set(org_name)
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def runtime() -> Runtime:
    """The command's runtime: with ``--org``, a tenant runtime of that org (an unknown name
    raises ``NotFound`` after an audit row)."""
    settings = load_settings()
    name = ORG.get()
    if name is None:
        return Runtime(settings)
    from trace_core.tenancy import org_by_name, record_event

    system = Runtime(settings)
    with system.state() as conn:
        try:
            org = org_by_name(conn, name)
        except TraceError as exc:
            record_event(
                conn, org_id=None, actor="cli", action="org.resolve", outcome="refused",
                detail=str(exc),
            )  # fmt: skip
            raise
    scoped = settings.model_copy(update={"org_id": str(org.org_id)})
    return Runtime(scoped, system.dbs, tenant=True)
