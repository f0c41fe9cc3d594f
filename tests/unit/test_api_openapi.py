"""The HTTP API's OpenAPI document: valid OpenAPI 3.1 (openapi-spec-validator), generated from
the route table, so every served route is documented with its role and refusals."""

from __future__ import annotations

from openapi_spec_validator import validate

from trace_core.api.openapi import openapi_document
from trace_core.api.routes import ENDPOINTS, api_routes
from trace_core.settings import Settings


def test_document_is_valid_openapi() -> None:
    validate(openapi_document(ENDPOINTS))  # raises on any schema violation


def test_every_served_route_is_in_the_document_with_its_role() -> None:
    doc = openapi_document(ENDPOINTS)
    served = {
        (method, route.path)  # type: ignore[attr-defined]
        for route in api_routes(Settings())
        for method in (route.methods or ())  # type: ignore[attr-defined]
        if method != "HEAD" and route.path != "/openapi.json"  # type: ignore[attr-defined]
    }
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert served == documented
    for ep in ENDPOINTS:
        op = doc["paths"][ep.path][ep.method.lower()]
        assert op["x-trace-role"] == ep.role.value
        assert {"401", "429"} <= set(op["responses"])
        for status in op["responses"]:
            assert int(status) in (ep.status, *ep.refusals)


def test_yaml_bodies_and_json_bodies_are_described() -> None:
    doc = openapi_document(ENDPOINTS)
    jobs = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert list(jobs) == ["application/yaml", "application/json"]
    assert jobs["application/json"]["schema"] == {"$ref": "#/components/schemas/JobUpload"}
    keys = doc["paths"]["/v1/keys"]["post"]["requestBody"]["content"]["application/json"]
    schema = doc["components"]["schemas"][keys["schema"]["$ref"].rsplit("/", 1)[1]]
    assert schema["properties"]["role"]["enum"] == ["viewer", "editor", "admin", "owner"]
