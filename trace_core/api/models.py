"""Request and answer bodies of the HTTP API (``/v1``): pydantic models, which both validate
requests and generate the OpenAPI document's schemas (``api.openapi``)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

RoleName = Literal["viewer", "editor", "admin", "owner"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. not_found, forbidden")
    message: str = Field(description="What went wrong; never a secret, never another org's name")
    problems: list[Problem] | None = Field(
        None, description="422 on a YAML body: every problem with its line and field"
    )


class Problem(BaseModel):
    file: str | None = None
    line: int | None = None
    field: str | None = None
    message: str


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"code", "message"}}`` (the Query Service's shape)."""

    error: ErrorDetail


# --- query --------------------------------------------------------------------------------


class QueryAnswer(BaseModel):
    columns: list[Any]
    rows: list[list[Any]]
    row_count: int
    truncated: bool
    export: dict[str, Any] | None = Field(None, description="Over the inline caps: one Parquet")
    query_id: str


# --- jobs ---------------------------------------------------------------------------------


class JobUpload(_Body):
    """A job or alert YAML with the Python UDF files it names (``Content-Type:
    application/json``); a YAML without UDF can also be sent as ``application/yaml``."""

    yaml: str = Field(description="The YAML document, as `trace-lite apply` reads it")
    files: dict[str, str] = Field(
        default_factory=dict,
        description="UDF sources by the name the YAML gives (`code.python:`, `udf:`)",
    )


class JobApplied(BaseModel):
    kind: Literal["chain_sync", "transform", "alert"]
    name: str
    id: uuid.UUID
    result: Literal["created", "updated", "unchanged"]


class JobSummary(BaseModel):
    kind: Literal["chain_sync", "transform"]
    name: str
    id: uuid.UUID
    enabled: bool | None = Field(None, description="chain_sync: false while paused")
    chain_id: int | None = None


class JobList(BaseModel):
    jobs: list[JobSummary]


class JobStatus(BaseModel):
    kind: Literal["chain_sync", "transform"]
    name: str
    status: dict[str, Any] = Field(
        description="chain_sync: `trace-lite status --json`'s job object; transform: its "
        "definition and source event counts"
    )


class JobChanged(BaseModel):
    name: str
    id: uuid.UUID
    enabled: bool


class Triggered(BaseModel):
    source_event_id: uuid.UUID
    task_id: uuid.UUID
    job: str
    kind: str
    idempotency_key: str
    created: bool


class Deleted(BaseModel):
    name: str
    id: uuid.UUID
    deleted: Literal[True] = True


# --- alerts -------------------------------------------------------------------------------


class Alert(BaseModel):
    name: str
    alert_id: uuid.UUID
    job: str
    enabled: bool
    definition: dict[str, Any] = Field(
        description="As `trace-lite alerts list --json` (URLs redacted)"
    )


class AlertList(BaseModel):
    alerts: list[Alert]


class Delivery(BaseModel):
    delivery_id: uuid.UUID
    dedupe_key: str
    alert_name: str
    channel_key: str
    channel_kind: str
    status: str
    attempts: int
    max_attempts: int
    next_attempt_at: dt.datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    delivered_at: dt.datetime | None = None
    created_at: dt.datetime


class DeliveryList(BaseModel):
    deliveries: list[Delivery]


# --- keys ---------------------------------------------------------------------------------


class KeyCreate(_Body):
    role: RoleName = Field(description="At most the caller's own role")
    name: str | None = Field(None, max_length=200, description="A label shown in listings")
    expires_at: AwareDatetime | None = Field(
        None, description="ISO 8601 with a time zone (e.g. 2027-01-01T00:00:00Z); none: never"
    )


class KeyInfo(BaseModel):
    key_id: uuid.UUID
    prefix: str = Field(description="The first characters of the secret, to recognise it")
    role: RoleName
    name: str | None = None
    created_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    last_used_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None


class KeyCreated(KeyInfo):
    secret: str = Field(description="The key itself: shown once, stored only hashed")


class KeyList(BaseModel):
    keys: list[KeyInfo]


class KeyRevoked(BaseModel):
    key_id: uuid.UUID
    revoked: Literal[True] = True


# --- members ------------------------------------------------------------------------------


class MemberSet(_Body):
    role: RoleName = Field(description="At most the caller's own role")


class MemberInfo(BaseModel):
    user_id: uuid.UUID
    email: str
    name: str | None = None
    role: RoleName
    created_at: dt.datetime | None = None


class MemberList(BaseModel):
    members: list[MemberInfo]


class MemberRemoved(BaseModel):
    email: str
    removed: Literal[True] = True


# --- misc ---------------------------------------------------------------------------------


class WhoAmI(BaseModel):
    org: str
    org_id: uuid.UUID
    role: RoleName
    key_id: uuid.UUID | None = None
    rate_limit: str = Field(description="This key's limit (TRACE_API_RATE_LIMIT)")


ErrorDetail.model_rebuild()
