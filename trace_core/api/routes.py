"""The route table of the HTTP API: one ``Endpoint`` per operation, read by the router
(``api_routes``) and by the OpenAPI generator (``api.openapi``) alike, so the document cannot
drift from what is served."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from trace_core.api import alerts, jobs, keys, members, query
from trace_core.api import models as m
from trace_core.api.http import Call, Endpoint, starlette_route
from trace_core.api.openapi import openapi_document
from trace_core.api.ratelimit import RateLimiter
from trace_core.query.service import QueryRequest
from trace_core.settings import Settings
from trace_core.tenancy import Role

V, E, A = Role.VIEWER, Role.EDITOR, Role.ADMIN
_READ = (401, 403, 404, 429)
_WRITE = (401, 403, 404, 409, 413, 422, 429)


def whoami(call: Call) -> m.WhoAmI:
    """The caller's org, role and key."""
    p = call.principal
    return m.WhoAmI(
        org=p.org_name,
        org_id=p.org_id,
        role=p.role.value,
        key_id=p.key_id,
        rate_limit=call.api.settings.api_rate_limit,
    )


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET",
        "/v1/whoami",
        whoami,
        V,
        "The caller's org and role",
        m.WhoAmI,
        "auth",
        refusals=(401, 429),
    ),
    Endpoint(
        "POST",
        "/v1/query",
        query.run_query,
        V,
        "Run read-only SQL over the org's data",
        m.QueryAnswer,
        "query",
        body=QueryRequest,
        refusals=(400, 401, 403, 404, 408, 409, 413, 422, 429),
        legacy_token=True,
        read_only=True,
    ),
    Endpoint(
        "POST",
        "/v1/jobs",
        jobs.create_job,
        E,
        "Apply a chain_sync, transform or alert YAML job",
        m.JobApplied,
        "jobs",
        body="yaml",
        status=201,
        refusals=_WRITE,
    ),
    Endpoint("GET", "/v1/jobs", jobs.list_jobs, V, "List jobs", m.JobList, "jobs", refusals=_READ),
    Endpoint(
        "GET",
        "/v1/jobs/{name}",
        jobs.get_job,
        V,
        "A job's status",
        m.JobStatus,
        "jobs",
        refusals=_READ,
    ),
    Endpoint(
        "POST",
        "/v1/jobs/{name}/pause",
        jobs.pause_job,
        E,
        "Pause a chain_sync job",
        m.JobChanged,
        "jobs",
        refusals=_WRITE,
    ),
    Endpoint(
        "POST",
        "/v1/jobs/{name}/resume",
        jobs.resume_job,
        E,
        "Resume a chain_sync job",
        m.JobChanged,
        "jobs",
        refusals=_WRITE,
    ),
    Endpoint(
        "POST",
        "/v1/jobs/{name}/trigger",
        jobs.trigger_job,
        E,
        "Run a transform job now (manual source; Idempotency-Key header)",
        m.Triggered,
        "jobs",
        status=202,
        refusals=_WRITE,
    ),
    Endpoint(
        "DELETE",
        "/v1/jobs/{name}",
        jobs.delete_job,
        E,
        "Delete a job",
        m.Deleted,
        "jobs",
        refusals=_WRITE,
    ),
    Endpoint(
        "POST",
        "/v1/alerts",
        alerts.create_alert,
        E,
        "Create or update an alert (YAML)",
        m.JobApplied,
        "alerts",
        body="yaml",
        status=201,
        refusals=_WRITE,
    ),
    Endpoint(
        "GET",
        "/v1/alerts",
        alerts.list_alert_definitions,
        V,
        "List alerts",
        m.AlertList,
        "alerts",
        refusals=_READ,
    ),
    Endpoint(
        "GET",
        "/v1/alerts/{name}",
        alerts.get_alert_definition,
        V,
        "One alert",
        m.Alert,
        "alerts",
        refusals=_READ,
    ),
    Endpoint(
        "PUT",
        "/v1/alerts/{name}",
        alerts.update_alert,
        E,
        "Replace an alert (YAML)",
        m.JobApplied,
        "alerts",
        body="yaml",
        refusals=_WRITE,
    ),
    Endpoint(
        "DELETE",
        "/v1/alerts/{name}",
        alerts.delete_alert,
        E,
        "Delete an alert",
        m.Deleted,
        "alerts",
        refusals=_WRITE,
    ),
    Endpoint(
        "GET",
        "/v1/alerts/{name}/deliveries",
        alerts.list_alert_deliveries,
        V,
        "An alert's deliveries, newest first",
        m.DeliveryList,
        "alerts",
        refusals=_READ,
    ),
    Endpoint(
        "POST",
        "/v1/keys",
        keys.create_api_key,
        A,
        "Create an API key (secret once)",
        m.KeyCreated,
        "keys",
        body=m.KeyCreate,
        status=201,
        refusals=_WRITE,
    ),
    Endpoint(
        "GET",
        "/v1/keys",
        keys.list_api_keys,
        A,
        "List the org's API keys",
        m.KeyList,
        "keys",
        refusals=_READ,
    ),
    Endpoint(
        "DELETE",
        "/v1/keys/{key_id}",
        keys.revoke_api_key,
        A,
        "Revoke an API key",
        m.KeyRevoked,
        "keys",
        refusals=_WRITE,
    ),
    Endpoint(
        "GET",
        "/v1/members",
        members.list_org_members,
        A,
        "List the org's members",
        m.MemberList,
        "members",
        refusals=_READ,
    ),
    Endpoint(
        "PUT",
        "/v1/members/{email}",
        members.set_org_member,
        A,
        "Give a user (by email) a role in the org",
        m.MemberInfo,
        "members",
        body=m.MemberSet,
        refusals=_WRITE,
    ),
    Endpoint(
        "DELETE",
        "/v1/members/{email}",
        members.remove_org_member,
        A,
        "Remove a member from the org",
        m.MemberRemoved,
        "members",
        refusals=_WRITE,
    ),
)


def api_routes(settings: Settings) -> list[BaseRoute]:
    """Every ``/v1`` route of the table plus ``GET /openapi.json``, to mount on the Query
    Service app before its own routes (``create_app(routes=...)``)."""
    limiter = RateLimiter(settings.api_rate_limit)
    document = openapi_document(ENDPOINTS)

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(document)

    return [
        *(starlette_route(settings, limiter, ep) for ep in ENDPOINTS),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
