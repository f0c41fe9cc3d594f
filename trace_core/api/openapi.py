"""The OpenAPI 3.1 document of the HTTP API (``GET /openapi.json``), generated from the route
table (``api.routes.ENDPOINTS``: method, path, role, summary, statuses) and the pydantic
request and answer models (their JSON Schemas, via ``pydantic.json_schema``). Nothing in it is
written by hand but the title; ``tests/unit/test_api_openapi.py`` validates it with
``openapi-spec-validator``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from trace_core.api.http import Endpoint
from trace_core.api.models import ErrorBody, JobUpload

TITLE = "Trace API"
VERSION = "1"
_PARAM = re.compile(r"{([a-z_]+)}")
_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    400: "Bad request (SQL rejected or failed)",
    401: "No valid API key (missing, malformed, unknown, expired or revoked)",
    403: "The key's role is too low for this operation",
    404: "No such object in the caller's org (another org's answers the same)",
    408: "Query timed out",
    409: "Conflict (state does not allow it, idempotency key reused, fake data)",
    413: "Body too large",
    422: "Invalid body: each problem with its line and field",
    429: "Rate limit of this key exceeded (Retry-After header)",
}


def openapi_document(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    """The document of ``endpoints`` (``api.routes.ENDPOINTS``), a plain JSON-ready dict."""
    models: set[type[BaseModel]] = {ErrorBody, JobUpload}
    for ep in endpoints:
        models.add(ep.response)
        if isinstance(ep.body, type):
            models.add(ep.body)
    ordered = sorted(models, key=lambda cls: cls.__name__)
    refs, defs = models_json_schema(
        [(cls, "validation") for cls in ordered], ref_template="#/components/schemas/{model}"
    )

    def ref(cls: type[BaseModel]) -> dict[str, Any]:
        return refs[(cls, "validation")]

    error = {"application/json": {"schema": ref(ErrorBody)}}
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        op: dict[str, Any] = {
            "operationId": ep.operation_id,
            "summary": ep.summary,
            "description": (ep.handler.__doc__ or ep.summary).strip()
            + f"\n\nRole: {ep.role.value} or higher.",
            "tags": [ep.tag],
            "security": [{"apiKey": []}],
            "x-trace-role": ep.role.value,
            "responses": {
                str(ep.status): {
                    "description": _REASONS.get(ep.status, "OK"),
                    "content": {"application/json": {"schema": ref(ep.response)}},
                },
                **{
                    str(code): {"description": _REASONS[code], "content": error}
                    for code in ep.refusals
                },
            },
        }
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAM.findall(ep.path)
        ]
        if ep.operation_id == "trigger_job":
            params.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "maxLength": 200},
                }
            )
        if ep.operation_id == "list_alert_deliveries":
            params.append(
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                }
            )
        if params:
            op["parameters"] = params
        if ep.body == "yaml":
            op["requestBody"] = {
                "required": True,
                "description": "A job or alert YAML document, as `trace-lite apply` reads; "
                "with Python UDFs, JSON carrying the YAML and the files it names",
                "content": {
                    "application/yaml": {"schema": {"type": "string"}},
                    "application/json": {"schema": ref(JobUpload)},
                },
            }
        elif isinstance(ep.body, type):
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(ep.body)}},
            }
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": "Trace's HTTP API (docs/api.md). Authenticate with "
            '`Authorization: Bearer <api key>`; errors are `{"error": {"code", "message"}}`.',
        },
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (trk_...)",
                }
            },
        },
    }
