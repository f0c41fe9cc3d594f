"""The Query Service over HTTP: a Starlette app around ``query.service.QueryService``.

``POST /v1/query`` (bearer user token), ``POST /v1/task-query`` (bearer task capability token),
``GET /healthz`` and any extra ``routes`` (the sources' webhook endpoint); request and answer
shapes, error codes and statuses are the service's (``query.service``). Bodies above
``MAX_BODY_BYTES`` are refused (413) before parsing. ``serve`` runs it with uvicorn;
``query.client`` is how callers reach it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Literal

import psycopg
from psycopg_pool import PoolTimeout
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from trace_core.db.connection import Databases
from trace_core.errors import QueryError, StorageError, TooLarge, TraceError
from trace_core.query.attach import HotSourceResolver
from trace_core.query.metrics import metrics_route
from trace_core.query.service import QueryService, client_error, error_body
from trace_core.settings import Settings
from trace_core.storage.base import ObjectStore

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


def create_app(
    settings: Settings,
    dbs: Databases,
    store: ObjectStore,
    *,
    hot_sources: HotSourceResolver | Literal["data"] | None = "data",
    gate: bool = True,
    routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The Query Service app. ``store`` is a ``trace_core.storage`` ObjectStore;
    ``hot_sources`` defaults to the block follower's ``data.hot_*`` tables (None: cold only);
    ``gate=False`` exists only to test the sandbox on its own; ``routes`` are mounted before
    the service's own (the sources' webhook endpoint and the HTTP API, ``trace_core.api``,
    whose ``POST /v1/query`` also answers user tokens; ``app.state.service`` is theirs)."""
    service = QueryService(settings, dbs, store, hot_sources=hot_sources, gate=gate)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(service.open)
        try:
            yield
        finally:
            await run_in_threadpool(service.close)

    async def user_query(request: Request) -> JSONResponse:
        return await _answer(service, "user", request)

    async def task_query(request: Request) -> JSONResponse:
        return await _answer(service, "task", request)

    async def healthz(request: Request) -> JSONResponse:
        try:
            ok = await run_in_threadpool(service.healthy)
        except (TraceError, psycopg.Error, PoolTimeout):
            body = error_body("state_unavailable", "state database unavailable")
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ok" if ok else "degraded"}, status_code=200 if ok else 503)

    app = Starlette(
        routes=[
            *routes,  # first: the HTTP API's POST /v1/query (API keys) takes over this one
            Route("/v1/query", user_query, methods=["POST"]),
            Route("/v1/task-query", task_query, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            metrics_route(service),
        ],
        lifespan=lifespan,
    )
    app.state.service = service
    return app


async def _answer(
    service: QueryService, kind: Literal["user", "task"], request: Request
) -> JSONResponse:
    try:
        body = await _read_body(request)
        payload = await run_in_threadpool(
            service.handle, kind, request.headers.get("authorization"), body
        )
    except TraceError as exc:
        error = client_error(exc)
        status = error.fields["status"]
        if not isinstance(exc, QueryError | StorageError):
            log.error("query service error", extra={"error_code": exc.code, "status": status})
        return JSONResponse(error_body(error.code, error.message), status_code=status)
    except Exception:  # translated into a 500; details go to the log, never to the client
        log.exception("query service internal error")
        return JSONResponse(error_body("internal", "internal error"), status_code=500)
    return JSONResponse(payload)


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise TooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise TooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def serve(settings: Settings, routes: Sequence[BaseRoute] = ()) -> None:
    """Run the Query Service with uvicorn on ``settings.query_host:query_port`` (blocks)."""
    import uvicorn

    from trace_core.db.connection import resolve_databases
    from trace_core.storage.factory import make_object_store

    app = create_app(
        settings, resolve_databases(settings), make_object_store(settings), routes=routes
    )
    uvicorn.run(app, host=settings.query_host, port=settings.query_port, log_level="info")
