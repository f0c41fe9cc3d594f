"""``POST /v1/query`` with an API key: the Query Service's pipeline (gate, grants, sandbox,
limits, audit) run as the key's org. The service sees a user token signed here for one
minute, naming the key (``sub = key:<id>``) and its org, granting every dataset of that org:
the org is the boundary (viewers and up read everything their org has)."""

from __future__ import annotations

from typing import Any

from trace_core.api import models as m
from trace_core.api.http import Call, Reply
from trace_core.query.service import QueryRequest, QueryService
from trace_core.query.tokens import issue_user_token

TOKEN_SECONDS = 60


def run_query(call: Call) -> Reply:
    """Run one read-only SELECT/WITH over the caller's org's datasets and hot rows."""
    request = call.model(QueryRequest)
    service: QueryService = call.api.service
    token = issue_user_token(
        call.api.settings,
        sub=call.principal.actor,
        datasets="all",
        org_id=call.org_id,
        ttl=TOKEN_SECONDS,
    )
    answer: dict[str, Any] = service.query("user", token, request)
    return m.QueryAnswer.model_validate(answer)
