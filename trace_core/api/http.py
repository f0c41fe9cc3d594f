"""The HTTP API's plumbing: the route table's row (``Endpoint``), what a handler receives
(``Call``), and the Starlette endpoint that authenticates, rate-limits, checks the role, reads
the body (capped), runs the handler in a thread, maps errors and writes the audit row.

Order of checks, each refusing with ``{"error": {"code", "message"}}`` and changing nothing:
API key (401) -> rate limit (429) -> role (403) -> body size (413) -> the handler's own (404
for a missing object and for another org's, 409, 422). Every refusal and every accepted change
is recorded in tenancy's ``state.audit_events`` (``record_event``: actor ``key:<id>``, action
``<METHOD> <route>``, the status, code and path parameters; never a secret or a body);
accepted reads are not.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from psycopg import Connection
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trace_core.api.ratelimit import RateLimiter
from trace_core.errors import (
    AlertNotFound,
    ApiRefused,
    ChainSyncJobNotFound,
    ConfigError,
    InvalidJobFile,
    QueryError,
    RetryableError,
    SourceRejected,
    TraceError,
    TransformNotFound,
    Unauthenticated,
)
from trace_core.settings import Settings
from trace_core.tenancy import Principal, Role, authenticate_key, record_event, tenant_scope

log = logging.getLogger(__name__)

Method = Literal["GET", "POST", "PUT", "DELETE"]
Reply = BaseModel | tuple[int, BaseModel]
Handler = Callable[["Call"], Reply]
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Endpoint:
    """One row of the route table: what the OpenAPI document and the router both read."""

    method: Method
    path: str
    handler: Handler
    role: Role
    summary: str
    response: type[BaseModel]
    tag: str
    body: type[BaseModel] | Literal["yaml"] | None = None
    status: int = 200
    refusals: tuple[int, ...] = ()
    # POST /v1/query also takes the Query Service's own user tokens (a JWT, not an API key)
    legacy_token: bool = False
    # a POST that changes nothing (a query: audited in data.query_audit): no audit_events
    # row when accepted (refusals still get theirs)
    read_only: bool = False

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


@dataclass
class Api:
    """What every handler shares: settings, the service's pools and the rate limiter."""

    settings: Settings
    state: ConnectionPool[Any]
    data: ConnectionPool[Any]
    limiter: RateLimiter
    service: Any = None  # the QueryService (POST /v1/query)


@dataclass
class Call:
    """One authenticated request, as a handler sees it."""

    api: Api
    principal: Principal
    params: Mapping[str, str]
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    audit_target: list[str] = field(default_factory=list)

    @property
    def org_id(self) -> uuid.UUID:
        return uuid.UUID(str(self.principal.org_id))

    @contextlib.contextmanager
    def state(self) -> Iterator[Connection[Any]]:
        """A state connection inside one transaction as the tenant role with the caller's org
        set (row-level security shows that org's rows only)."""
        with self.api.state.connection() as conn, tenant_scope(conn, self.principal.org_id):
            yield conn

    @contextlib.contextmanager
    def data(self) -> Iterator[Connection[Any]]:
        """A data connection inside one transaction scoped to the caller's org (RLS)."""
        with self.api.data.connection() as conn, tenant_scope(conn, self.principal.org_id):
            yield conn

    def model(self, cls: type[M]) -> M:
        """The JSON body as ``cls``; 422 naming every bad field."""
        try:
            return cls.model_validate_json(self.body or b"{}")
        except ValidationError as exc:
            fields = sorted(
                {".".join(str(p) for p in err["loc"]) or "<body>" for err in exc.errors()}
            )
            raise ApiRefused(
                f"invalid request body (fields: {', '.join(fields)})",
                code="invalid_body",
                status=422,
            ) from None


def not_found(kind: str, name: str) -> ApiRefused:
    """The one answer for a missing object and for another org's (no existence leak)."""
    return ApiRefused(f"no {kind} named {name!r}", code="not_found", status=404)


def error_answer(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` for an error a handler raised; internals never reach the client."""
    problems: list[dict[str, Any]] | None = None
    if isinstance(exc, ApiRefused | SourceRejected):
        status, code, message = exc.status, exc.code, exc.message
    elif isinstance(exc, TraceError) and isinstance(getattr(exc, "http_status", None), int):
        # tenancy's Unauthenticated (401), Forbidden (403), NotFound (404), Conflict (409)
        status, code, message = exc.http_status, exc.code, exc.message  # type: ignore[attr-defined]
    elif isinstance(exc, ChainSyncJobNotFound | TransformNotFound | AlertNotFound):
        status, code, message = 404, "not_found", str(exc)
    elif isinstance(exc, ConfigError):
        status, code, message = 422, exc.code, str(exc)
        listed = exc.problems if isinstance(exc, InvalidJobFile) else [exc]
        problems = [
            {"file": p.file, "line": p.line, "field": p.field, "message": p.reason} for p in listed
        ]
    elif isinstance(exc, QueryError):
        from trace_core.query.service import status_of

        status, code, message = status_of(exc), exc.code, exc.message
        if status >= 500:
            message = "service unavailable"
    elif isinstance(exc, TraceError):
        status = 503 if isinstance(exc, RetryableError) else 500
        code, message = exc.code, "service unavailable"
    else:
        status, code, message = 500, "internal", "internal error"
    detail: dict[str, Any] = {"code": code, "message": message}
    if problems is not None:
        detail["problems"] = problems
    return status, {"error": detail}


def bearer(authorization: str | None) -> str:
    """The token of ``Authorization: Bearer <token>``; ``Unauthenticated`` otherwise."""
    if not authorization:
        raise Unauthenticated("missing Authorization: Bearer <api key>")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization must be 'Bearer <api key>'")
    return token.strip()


async def read_capped(request: Request, max_bytes: int) -> bytes:
    too_big = ApiRefused(
        f"request body is larger than {max_bytes} bytes", code="body_too_large", status=413
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def authenticate(api: Api, authorization: str | None) -> Principal:
    """The caller of an API key (blocking: one state round trip)."""
    secret = bearer(authorization)
    with api.state.connection() as conn:
        return authenticate_key(conn, secret, audit=False)


def audit(
    api: Api,
    principal: Principal | None,
    action: str,
    target: str | None,
    status: int,
    code: str | None,
) -> None:
    """Record one request; a failure to record is logged and never hides the answer."""
    outcome = "ok" if status < 400 else ("refused" if status < 500 else "failed")
    detail = " ".join(p for p in (str(status), code, target) if p)
    try:
        with api.state.connection() as conn:
            record_event(
                conn,
                org_id=principal.org_id if principal else None,
                actor=principal.actor if principal else "anonymous",
                action=action,
                outcome=outcome,  # type: ignore[arg-type]
                detail=detail,
            )
    except Exception:  # the answer still goes out; the log says the audit row is missing
        log.exception("api audit row not written", extra={"action": action, "status": status})


def is_jwt(authorization: str | None) -> bool:
    """Whether the bearer looks like a JWT (three dot-separated parts), not an API key."""
    _, _, token = (authorization or "").partition(" ")
    return token.strip().count(".") == 2


async def _legacy_query(api: Api, request: Request, action: str) -> JSONResponse:
    """``POST /v1/query`` with a user token, exactly as the Query Service answers it; a refusal
    is audited under no org (the token's claims are not trusted until verified)."""
    try:
        body = await read_capped(request, api.settings.api_max_body_bytes)
        payload = await run_in_threadpool(
            api.service.handle, "user", request.headers.get("authorization"), body
        )
    except Exception as exc:
        status, answer = error_answer(exc)
        code = answer["error"]["code"]
        await run_in_threadpool(audit, api, None, action, "user token", status, code)
        return JSONResponse(answer, status_code=status)
    return JSONResponse(payload)


def api_of(request: Request, settings: Settings, limiter: RateLimiter) -> Api:
    """The app's ``Api``, built on first use from the Query Service it is mounted on (its
    state and data pools; ``app.state.service``)."""
    api: Api | None = getattr(request.app.state, "trace_api", None)
    if api is None:
        service = request.app.state.service
        api = Api(settings, service.state, service.data, limiter, service)
        request.app.state.trace_api = api
    return api


def starlette_route(settings: Settings, limiter: RateLimiter, ep: Endpoint) -> Route:
    """The Starlette route of one table row."""

    async def endpoint(request: Request) -> JSONResponse:
        api = api_of(request, settings, limiter)
        principal: Principal | None = None
        action = f"{ep.method} {ep.path}"
        target = ",".join(f"{k}={v}" for k, v in request.path_params.items()) or None
        headers: dict[str, str] = {}
        if ep.legacy_token and is_jwt(request.headers.get("authorization")):
            return await _legacy_query(api, request, action)
        call: Call | None = None
        try:
            try:
                principal = await run_in_threadpool(
                    authenticate, api, request.headers.get("authorization")
                )
            except Unauthenticated:
                # guesses are limited per client address: past the limit, 429 instead of 401
                api.limiter.check(f"addr:{request.client.host if request.client else '-'}")
                raise
            api.limiter.check(f"key:{principal.key_id}")
            principal.require(ep.role, f"{ep.method} {ep.path}")
            body = await read_capped(request, api.settings.api_max_body_bytes)
            call = Call(
                api,
                principal,
                dict(request.path_params),
                dict(request.query_params),
                dict(request.headers),
                body,
            )
            reply = await run_in_threadpool(ep.handler, call)
        except Exception as exc:  # every error becomes one JSON answer and one audit row
            status, answer = error_answer(exc)
            if status >= 500:
                log.error(
                    "api request failed",
                    exc_info=not isinstance(exc, TraceError),
                    extra={"route": ep.path, "status": status},
                )
            if isinstance(exc, ApiRefused) and "retry_after" in exc.fields:
                headers["Retry-After"] = str(exc.fields["retry_after"])
            code = answer["error"]["code"]
            await run_in_threadpool(audit, api, principal, action, target, status, code)
            return JSONResponse(answer, status_code=status, headers=headers)
        status, model = reply if isinstance(reply, tuple) else (ep.status, reply)
        if call.audit_target:
            target = ",".join(filter(None, [target, *call.audit_target]))
        if ep.method != "GET" and not ep.read_only:
            await run_in_threadpool(audit, api, principal, action, target, status, None)
        return JSONResponse(model.model_dump(mode="json"), status_code=status)

    endpoint.__name__ = ep.operation_id
    return Route(ep.path, endpoint, methods=[ep.method])
