"""Transform runs as Trace tasks: the typed payload, deterministic ids, pinned inputs, creation.

Every run of a transform is one ``udf_transform`` task whose payload pins everything it may
use: the code (``bundle_sha256`` of the Python UDF, or the SQL), the input versions
(``grants``, so the capability token reads exactly those) and the output range. Task ids are
``uuid5(transform_id, trigger_key)``: the primary input's version for an on-input run, the
source event's kind and idempotency key for cron, webhook and manual runs. Creating the task
writes its wake-up to the outbox in the same transaction (``tasks.lifecycle.create_task``).

The output version's ``config_hash`` is ``transform.{name}:{code[:16]}:{inputs fingerprint}``,
so a retry of one run (same code, same pinned inputs) maps to one dataset version, and two
triggers over the same inputs register nothing twice.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated, Any

from psycopg import Connection
from pydantic import Field, Strict

from trace_core.datasets import registry
from trace_core.errors import SourceRejected
from trace_core.operators.payload import TaskPayload
from trace_core.tasks.lifecycle import create_task
from trace_core.transforms.store import TransformRow

OPERATOR = "udf_transform"
TASK_NAMESPACE = uuid.UUID("0e7b6c2d-5f4a-4b3c-8d9e-7a6b5c4d3e2f")
# A source-triggered run pins every committed version of its inputs; past this many it is
# refused rather than silently reading a subset (narrow the inputs or use on_input).
MAX_SOURCE_PINS = 512


class TransformPayload(TaskPayload):
    """A ``udf_transform`` task payload (built by routing or a source; never a secret)."""

    transform_id: uuid.UUID
    transform_name: Annotated[str, Strict(), Field(min_length=1)]
    job_name: Annotated[str, Strict(), Field(min_length=1)]
    chain_id: Annotated[int, Strict()]
    output_key: Annotated[str, Strict(), Field(min_length=1)]
    inputs: list[str]
    code_kind: Annotated[str, Field(pattern="^(python|sql)$")]
    bundle_sha256: str | None = None
    sql: str | None = None
    limits: dict[str, Any] = Field(default_factory=dict)
    range_start: Annotated[int, Strict(), Field(ge=0)]
    range_end: Annotated[int, Strict(), Field(ge=1)]
    trigger: Annotated[str, Field(pattern="^(on_input|cron|webhook|manual)$")]
    source: dict[str, Any] = Field(default_factory=dict)
    grants: list[dict[str, str]] = Field(default_factory=list)
    # an on-input run whose first input is a stream: its range is a partition of that stream
    partitioned: bool = False

    def config_hash(self) -> str:
        code = self.bundle_sha256 or hashlib.sha256((self.sql or "").encode()).hexdigest()
        return f"transform.{self.transform_name}:{code[:16]}:{inputs_fingerprint(self.grants)}"


def inputs_fingerprint(grants: list[dict[str, str]]) -> str:
    """16 hex of sha256 over the pinned versions (order-independent)."""
    versions = sorted(g["dataset_version"] for g in grants)
    return hashlib.sha256("|".join(versions).encode()).hexdigest()[:16]


def run_task_id(transform_id: uuid.UUID, trigger_key: str) -> uuid.UUID:
    return uuid.uuid5(TASK_NAMESPACE, f"{OPERATOR}:{transform_id}:{trigger_key}")


def pin(rec: registry.VersionRecord) -> dict[str, str]:
    return {
        "dataset_uuid": str(rec.dataset_uuid),
        "dataset_version": str(rec.dataset_version),
        "manifest_key": rec.manifest_key,
    }


def build_payload(
    t: TransformRow,
    *,
    grants: list[dict[str, str]],
    range_start: int,
    range_end: int,
    trigger: str,
    source: dict[str, Any],
    partitioned: bool = False,
) -> TransformPayload:
    spec = t.model()
    return TransformPayload(
        transform_id=t.transform_id,
        transform_name=t.name,
        job_name=t.job_name,
        chain_id=t.chain_id,
        output_key=t.output_key,
        inputs=list(t.inputs),
        code_kind=t.code_kind,
        bundle_sha256=t.bundle_sha256,
        sql=spec.code.sql,
        limits=spec.limit_overrides(),
        range_start=range_start,
        range_end=range_end,
        trigger=trigger,
        source=source,
        grants=grants,
        partitioned=partitioned,
    )


def create_run(
    conn: Connection[Any],
    task_id: uuid.UUID,
    payload: TransformPayload,
    *,
    max_attempts: int,
) -> bool:
    """Insert the run's task and its outbox wake-up in the caller's transaction (a repeat of
    the same id is a no-op). Returns True when new."""
    return create_task(
        conn,
        task_id=task_id,
        operator=OPERATOR,
        payload=payload.to_json(),
        max_attempts=max_attempts,
    )


def covering_pins(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    t: TransformRow,
    key: str,
    start: int,
    end: int,
) -> list[dict[str, str]] | None:
    """Pins of ``key``'s versions overlapping ``[start, end)``, or None if some block of the
    range has no committed version yet."""
    recs = [
        r
        for r in registry.versions_for_stream(conn, org_id, t.chain_id, key)
        if r.range_end > start and r.range_start < end
    ]
    if registry.missing_ranges(recs, start, end):
        return None
    return [pin(r) for r in recs]


def latest_pins(
    conn: Connection[Any], org_id: str | uuid.UUID, t: TransformRow
) -> tuple[list[dict[str, str]], int, int] | None:
    """Every visible version of each input (a source-triggered run reads all committed data),
    and the primary input's covered range. None when an input has nothing committed yet.
    Raises ``SourceRejected`` past ``MAX_SOURCE_PINS``."""
    grants: list[dict[str, str]] = []
    start = end = 0
    for i, key in enumerate(t.inputs):
        recs = registry.versions_for_stream(conn, org_id, t.chain_id, key)
        if not recs:
            return None
        if i == 0:
            start = min(r.range_start for r in recs)
            end = max(r.range_end for r in recs)
        grants.extend(pin(r) for r in recs)
    if len(grants) > MAX_SOURCE_PINS:
        raise SourceRejected(
            f"transform {t.name!r} would read {len(grants)} versions, over {MAX_SOURCE_PINS}",
            code="too_many_inputs",
            status=409,
        )
    return grants, start, end
