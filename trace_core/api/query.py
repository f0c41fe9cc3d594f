"""``POST /v1/query`` with an API key: the Query Service's own pipeline (key -> org, grants,
gate, sandbox, limits, audit; ``QueryService``), after the API's rate limit. The key's org is
the boundary: any role reads every dataset of its org, nothing of another's."""

from __future__ import annotations

from typing import Any

from trace_core.api import models as m
from trace_core.api.http import Call, Reply
from trace_core.query.service import QueryRequest, QueryService


def run_query(call: Call) -> Reply:
    """Run one read-only SELECT/WITH over the caller's org's datasets and hot rows."""
    request = call.model(QueryRequest)
    service: QueryService = call.api.service
    # the key was authenticated by the API (once: no second lookup of the same key)
    answer: dict[str, Any] = service.query_as(call.principal, request)
    return m.QueryAnswer.model_validate(answer)
