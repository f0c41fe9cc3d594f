"""Database URLs and connections.

State and data are separate databases. With no URL configured, both live on the embedded
server as ``trace_state`` and ``trace_data``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from trace_core.errors import DatabaseUnreachable
from trace_core.settings import Settings

# Opens a state connection (``Runtime.state``), as the lower layers take it.
StateConnect = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]

log = logging.getLogger(__name__)

STATE_DB = "trace_state"
DATA_DB = "trace_data"


@dataclass(frozen=True)
class Databases:
    """Connection URLs of the two databases. Contains secrets: never log it whole."""

    state_url: str
    data_url: str

    def __repr__(self) -> str:
        return f"Databases(state={redact_url(self.state_url)}, data={redact_url(self.data_url)})"


def redact_url(url: str) -> str:
    """A URL fit for logs and errors: host and database, never the password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable database url>"
    host = params.get("host") or "localhost"
    port = params.get("port")
    db = params.get("dbname") or ""
    return f"postgresql://{host}{':' + str(port) if port else ''}/{db}"


def with_database(url: str, dbname: str) -> str:
    """The same server URL pointing at another database."""
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))
    return make_conninfo(url, dbname=dbname)


def session_options(
    url: str, *, org_id: str | None = None, role: str | None = None
) -> dict[str, str]:
    """``psycopg.connect`` keyword arguments that start a session with the org stamped on new
    tenant rows (``trace.org_id``) and, optionally, as ``role`` (e.g. ``trace_tenant``),
    appended to any ``options`` the URL already carries. Empty when neither is given."""
    extra = []
    if role:
        extra.append(f"-c role={role}")
    if org_id:
        extra.append(f"-c trace.org_id={org_id}")
    if not extra:
        return {}
    try:
        given = conninfo_to_dict(url).get("options")
    except psycopg.ProgrammingError:
        given = None
    return {"options": " ".join(([str(given)] if given else []) + extra)}


def system_session(settings: Settings) -> dict[str, Any]:
    """``connect`` keywords for the system's own connections (dispatcher, workers, the hot
    follower and compactor): as ``settings.db_system_role``, stamping the settings' org."""
    return {"org_id": settings.org_id, "role": settings.db_system_role or None}


def with_session(url: str, *, org_id: str | None = None, role: str | None = None) -> str:
    """``url`` with ``session_options`` folded in (for a libpq client other than psycopg's
    ``connect``, e.g. DuckDB's Postgres scanner)."""
    opts = session_options(url, org_id=org_id, role=role)
    return make_conninfo(url, **opts) if opts else url


def connect(
    url: str,
    *,
    autocommit: bool = False,
    org_id: str | None = None,
    role: str | None = None,
    **kwargs: Any,
) -> psycopg.Connection[Any]:
    """Open a connection, translating failures into ``DatabaseUnreachable`` (password redacted).

    ``org_id``/``role``: see ``session_options`` (a private, unpooled connection only; pooled
    connections set both per transaction with ``tenancy.tenant_scope``). An ``options``
    keyword is appended to the URL's and the session's, not put in their place."""
    extra = kwargs.pop("options", None)
    opts = session_options(url, org_id=org_id, role=role)
    if extra:
        base = opts.get("options") or conninfo_to_dict(url).get("options")
        opts = {"options": f"{base} {extra}" if base else extra}
    kwargs.update(opts)
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=10, **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseUnreachable(
            f"cannot connect to {redact_url(url)}: {_first_line(exc)}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def ensure_database(server_url: str, dbname: str) -> None:
    """Create ``dbname`` on the server if missing (racing creators are fine)."""
    with connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if exists:
            return
        with contextlib.suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


def resolve_databases(settings: Settings) -> Databases:
    """Resolve state/data URLs: explicit URLs, else a server URL, else the embedded server."""
    state = settings.state_url.get_secret_value() if settings.state_url else None
    data = settings.data_url.get_secret_value() if settings.data_url else None
    if state and data:
        return Databases(state, data)
    if settings.database_url:
        server = settings.database_url.get_secret_value()
    else:
        from trace_core.db.embedded import embedded_server_uri

        server = embedded_server_uri(settings.resolved_home())
    if not state:
        ensure_database(server, STATE_DB)
        state = with_database(server, STATE_DB)
    if not data:
        ensure_database(server, DATA_DB)
        data = with_database(server, DATA_DB)
    return Databases(state, data)
