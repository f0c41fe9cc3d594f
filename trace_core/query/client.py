"""How ``trace-lite query`` reaches the Query Service: over HTTP, or in process (embedded).

``TRACE_QUERY_URL`` set, or a service answering ``/healthz`` at the default address: HTTP
(``query_http``, to the app in ``query.app``). Otherwise the query is answered in this
process by a ``QueryService`` (``query.service``), the same pipeline the HTTP handler calls
(token check, grants, SQL gate, DuckDB sandbox in a worker process, row limits, export, audit
row), so both paths give the same rows and refuse the same SQL with the same error code and
message. Choosing the route (``choose_route``) does
one quick probe; nothing is printed here, the caller shows ``Route.notice``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import ValidationError

from trace_core.db.connection import Databases, resolve_databases
from trace_core.errors import QueryError, TraceError
from trace_core.query.service import QueryRequest, QueryService, client_error
from trace_core.query.tokens import issue_user_token
from trace_core.settings import Settings
from trace_core.storage.base import ObjectStore

log = logging.getLogger(__name__)

LOCAL_USER = "user:local"

Mode = Literal["auto", "http", "embedded"]
# a closed loopback port refuses at once; a live service answers /healthz in milliseconds
PROBE_TIMEOUT = httpx.Timeout(2.0, connect=0.5)
# one engine worker keeps the crash and resource isolation without forking a whole pool
EMBEDDED_WORKERS = 1


@dataclass(frozen=True)
class Route:
    """Where a query goes: ``http`` to ``url``, or ``embedded`` (``notice`` says why)."""

    mode: Literal["http", "embedded"]
    url: str
    notice: str | None = None


def service_answers(url: str, timeout: httpx.Timeout = PROBE_TIMEOUT) -> bool:
    """True when a Query Service answers ``GET {url}/healthz`` (healthy or not): a JSON
    object with ``status`` or ``error``. Anything else (refused, timed out, another
    program on the port) counts as no service."""
    try:
        response = httpx.get(url.rstrip("/") + "/healthz", timeout=timeout)
        body = response.json()
    except (httpx.HTTPError, ValueError):
        return False
    return isinstance(body, dict) and ("status" in body or "error" in body)


def choose_route(settings: Settings, mode: Mode = "auto") -> Route:
    """``http`` when forced, when ``settings.query_url`` is set (never falls back: an
    unreachable URL is an error of the query) or when a service answers at the default
    address; ``embedded`` when forced or when nothing answers there."""
    url = settings.resolved_query_url()
    if mode == "embedded":
        return Route("embedded", url, "answering in process (embedded, --embedded)")
    if mode == "http" or settings.query_url:
        return Route("http", url)
    if service_answers(url):
        return Route("http", url)
    return Route(
        "embedded", url, f"no Query Service at {public_url(url)}; answering in process (embedded)"
    )


def query_embedded(
    settings: Settings,
    dbs: Databases | None,
    store: ObjectStore,
    sql: str,
    job: str | None = None,
    *,
    max_rows: int | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Answer ``sql`` in process as the local user (or ``token``'s user) and return the same
    JSON the service's ``POST /v1/query`` does. Starts and stops a ``QueryService`` with one
    engine worker (``query_workers=0`` stays in process). Raises ``QueryError`` exactly as
    ``query_http`` does for a refused or failing query (code, message, ``status``), and any
    other ``TraceError`` with its own message (this process is the operator's own)."""
    local = settings.model_copy(
        update={"query_workers": min(settings.query_workers, EMBEDDED_WORKERS)}
    )
    try:
        request = QueryRequest(sql=sql, job=job, max_rows=max_rows)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})
        raise QueryError(
            f"invalid request (fields: {', '.join(fields)})", code="bad_request", status=400
        ) from exc
    service = QueryService(local, dbs or resolve_databases(local), store)
    log.info("answering in process", extra={"query_workers": local.query_workers})
    service.open()
    try:
        return service.query("user", token or local_user_token(local), request)
    except QueryError as exc:
        raise client_error(exc) from exc
    except TraceError:
        raise
    except Exception as exc:  # a bug, not a refusal: one line for the operator, trace in the log
        log.debug("embedded query failed", exc_info=True)
        raise QueryError(
            f"internal error ({type(exc).__name__}: {exc})", code="internal", status=500
        ) from exc
    finally:
        service.close()


# --- over HTTP ---------------------------------------------------------------------------


def public_url(url: str) -> str:
    """``url`` fit for messages: scheme, host, port and path; no credentials or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a number: not worth echoing
        port = ""
    return urlunsplit((parts.scheme, f"{host}{port}", parts.path, "", ""))


def local_user_token(settings: Settings) -> str:
    """A token for the local operator: every dataset of the settings' org."""
    return issue_user_token(settings, sub=LOCAL_USER, datasets="all")


def query_http(
    settings: Settings,
    sql: str,
    job: str | None = None,
    *,
    max_rows: int | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """POST ``sql`` to the Query Service at ``settings.resolved_query_url()``.

    Returns the response JSON; raises ``QueryError`` carrying the service's error code (and
    ``status``), or ``QueryError(code='service_unreachable')``.
    """
    body: dict[str, Any] = {"sql": sql}
    if job is not None:
        body["job"] = job
    if max_rows is not None:
        body["max_rows"] = max_rows
    url = settings.resolved_query_url().rstrip("/") + "/v1/query"
    headers = {"Authorization": f"Bearer {token or local_user_token(settings)}"}
    try:
        response = httpx.post(
            url, json=body, headers=headers, timeout=settings.query_timeout_seconds + 30
        )
    except httpx.TransportError as exc:
        raise QueryError(
            f"cannot reach the Query Service at {public_url(url)}: {exc}",
            code="service_unreachable",
        ) from exc
    if response.status_code == 200:
        result: dict[str, Any] = response.json()
        return result
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", f"HTTP {response.status_code}"
    raise QueryError(message, code=code, status=response.status_code)
