"""Alert definitions in Postgres state: apply (idempotent), list, look up.

``apply_alert`` checks what YAML validation cannot: the chain_sync job exists in the org and
every key in ``reads`` is one of its active streams or one of the ``analytics_*`` outputs its
``analytics:`` block produces (committed as dataset versions on the job's chain). An unchanged file is a no-op; an edit
updates the row in place (same ``alert_id``), so its pending deliveries and events remain.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from trace_core.alerts.spec import AlertSpec, LoadedAlert, load_alert_file
from trace_core.chain_sync import store as chain_sync_store
from trace_core.chain_sync.analytics_spec import OUTPUT_PREFIX, output_keys
from trace_core.db.queries import q
from trace_core.errors import AlertNotFound, ChainSyncJobNotFound, ConfigError, InvalidJobFile
from trace_core.transforms.store import list_transforms

ALERT_NAMESPACE = uuid.UUID("3f0d8a52-61c4-4c57-9a0e-6a3c2b51e7d4")


def alert_id(org_id: str | uuid.UUID, name: str) -> uuid.UUID:
    """Deterministic id of an alert: its identity is ``(org_id, name)``."""
    return uuid.uuid5(ALERT_NAMESPACE, f"alert:{org_id}:{name}")


@dataclass(frozen=True)
class ApplyResult:
    alert_id: uuid.UUID
    created: bool
    changed: bool


@dataclass(frozen=True)
class AlertRow:
    alert_id: uuid.UUID
    org_id: uuid.UUID
    name: str
    job_name: str
    reads: list[str]
    on_commit: bool
    schedule_seconds: int | None
    severity: str
    enabled: bool
    spec: dict[str, Any]
    yaml_hash: str
    source_file: str | None
    next_scheduled_at: datetime | None
    created_at: datetime
    updated_at: datetime

    def model(self) -> AlertSpec:
        """The stored definition as a validated model (it was validated at apply)."""
        return AlertSpec.model_validate(self.spec, strict=False)

    def as_json(self, *, redact: bool = True) -> dict[str, Any]:
        """JSON-ready fields; webhook URLs redacted unless ``redact=False``."""
        spec = self.model()
        return {
            "alert_id": str(self.alert_id),
            "name": self.name,
            "job": self.job_name,
            "reads": list(self.reads),
            "trigger": spec.trigger.model_dump(exclude_none=True),
            "severity": self.severity,
            "enabled": self.enabled,
            "dedupe_key": spec.dedupe_key,
            "channels": [
                c.describe() if redact else c.model_dump(exclude_none=True) for c in spec.channels
            ],
            "source_file": self.source_file,
            "next_scheduled_at": self.next_scheduled_at.isoformat()
            if self.next_scheduled_at
            else None,
            "updated_at": self.updated_at.isoformat(),
        }


def readable_keys(
    conn: Connection[Any], org_id: str | uuid.UUID, job_id: uuid.UUID
) -> tuple[set[str], tuple[str, ...]]:
    """What an alert of the job may read: its active stream keys, and the ``analytics_*``
    outputs its ``analytics:`` block produces (``chain_sync.analytics_spec.output_keys``)."""
    streams = {s.dataset_key for s in chain_sync_store.list_streams(conn, org_id, job_id)}
    # transform outputs of the job are committed datasets of its chain too
    job = chain_sync_store.get_job(conn, org_id, job_id)
    streams |= {t.output_key for t in list_transforms(conn, org_id) if t.job_name == job.name}
    row = conn.execute(q("alerts", "job_analytics"), {"job_id": job_id}).fetchone()
    return streams, output_keys(row[0] if row else None)


def _unreadable(job: str, key: str, streams: set[str], outputs: tuple[str, ...]) -> str:
    if key.startswith(OUTPUT_PREFIX) and key not in streams:
        if not outputs:
            return f"job {job!r} has no analytics: block, so no analytics output {key!r}"
        return (
            f"job {job!r} produces no analytics output {key!r} "
            f"(its analytics outputs: {', '.join(outputs)})"
        )
    also = f"; analytics outputs: {', '.join(outputs)}" if outputs else ""
    return f"job {job!r} has no active stream {key!r} (streams: {', '.join(sorted(streams))}{also})"


def _check_job(conn: Connection[Any], org_id: str | uuid.UUID, loaded: LoadedAlert) -> None:
    spec, doc = loaded.spec, loaded.doc
    try:
        job = chain_sync_store.get_job(conn, org_id, spec.job)
    except ChainSyncJobNotFound:
        raise ConfigError(
            f"chain_sync job {spec.job!r} is not applied (trace-lite apply --file ...)",
            file=doc.source,
            line=doc.line_of(("job",)),
            field="job",
        ) from None
    streams, outputs = readable_keys(conn, org_id, job.job_id)
    problems = [
        ConfigError(
            _unreadable(spec.job, key, streams, outputs),
            file=doc.source,
            line=doc.line_of(("reads", i)),
            field=f"reads[{i}]",
        )
        for i, key in enumerate(spec.reads)
        if key not in streams and key not in outputs
    ]
    if problems:
        raise InvalidJobFile(problems)


def apply_alert(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    loaded: LoadedAlert,
    source_file: str | None = None,
    *,
    bundles: Callable[[str], str] | None = None,
) -> ApplyResult:
    """Create or update the alert named in ``loaded`` (idempotent). A Python alert's UDF is
    stored first through ``bundles`` (source -> sha256, ``trace_core.udf.bundles``) and the
    definition pins that sha.

    Raises ``ConfigError``/``InvalidJobFile`` naming the file line when the job or a stream is
    unknown. Runs in its own transaction on ``conn``.
    """
    spec = loaded.spec
    aid = alert_id(org_id, spec.name)
    with conn.transaction():
        _check_job(conn, org_id, loaded)
    if loaded.udf_source is not None:
        if bundles is None:
            raise ConfigError(
                "a Python alert needs its bundle stored (apply with trace-lite alerts apply)",
                file=loaded.doc.source,
                field="udf",
            )
        spec = spec.model_copy(update={"udf_sha256": bundles(loaded.udf_source)})
    with conn.transaction():
        row = conn.execute(
            q("alerts", "upsert_definition"),
            {
                "alert_id": aid,
                "org_id": uuid.UUID(str(org_id)),
                "name": spec.name,
                "job_name": spec.job,
                "reads": list(spec.reads),
                "on_commit": spec.trigger.on_commit,
                "schedule_seconds": spec.trigger.schedule_seconds,
                "severity": spec.severity,
                "enabled": spec.enabled,
                "spec": Jsonb(spec.model_dump(mode="json")),
                "yaml_hash": chain_sync_store.yaml_hash(loaded.raw),
                "source_file": source_file,
            },
        ).fetchone()
    if row is None:
        return ApplyResult(aid, created=False, changed=False)
    return ApplyResult(aid, created=bool(row[0]), changed=True)


def list_alerts(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    *,
    name: str | None = None,
    alert: uuid.UUID | None = None,
) -> list[AlertRow]:
    """Alert definitions of the org (optionally one, by name or id), by name."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            q("alerts", "list_definitions"),
            {"org_id": uuid.UUID(str(org_id)), "name": name, "alert_id": alert},
        ).fetchall()
    return [AlertRow(**r) for r in rows]


def get_alert(conn: Connection[Any], org_id: str | uuid.UUID, ref: str | uuid.UUID) -> AlertRow:
    """One alert by name or id. Raises ``AlertNotFound``."""
    as_id: uuid.UUID | None
    try:
        as_id = ref if isinstance(ref, uuid.UUID) else uuid.UUID(ref)
    except ValueError:
        as_id = None
    rows = (
        list_alerts(conn, org_id, alert=as_id)
        if as_id is not None
        else list_alerts(conn, org_id, name=str(ref))
    )
    if not rows:
        raise AlertNotFound(f"alert not found: {ref}", alert=str(ref))
    return rows[0]


def apply_alert_file(
    conn: Connection[Any], org_id: str | uuid.UUID, path: str | Path
) -> ApplyResult:
    """Load, validate and apply an alert file (``apply_alert`` of ``load_alert_file``)."""
    return apply_alert(conn, org_id, load_alert_file(path), str(path))
