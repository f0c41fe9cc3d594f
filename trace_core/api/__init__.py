"""Trace's HTTP API (``/v1``, docs/api.md): jobs, alerts, keys and queries by API key, with
roles, per-key rate limits, audit rows and an OpenAPI document at ``/openapi.json``.

It is mounted on the Query Service's app (same process and port) by the entry point
(``trace-lite query-service``), as the sources' webhook routes are: ``query`` never imports
it. ``api_routes(settings)`` is the whole face.
"""

from trace_core.api.routes import ENDPOINTS, api_routes

__all__ = ["ENDPOINTS", "api_routes"]
