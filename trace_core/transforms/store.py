"""Transform definitions in Postgres state: apply (idempotent), list, look up.

``apply_transform`` checks what YAML validation cannot: the chain_sync job exists, every input
is one of its active streams or another transform's output on the job, and the output names
no stream of the job nor another transform's output on the chain. A Python UDF is stored as
a content-addressed bundle (``trace_core.udf.bundles.put_bundle``) before the row points at
its sha256, so a task that pins the sha always finds its exact code.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg import Connection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from trace_core.chain_sync import store as chain_sync_store
from trace_core.db.queries import q
from trace_core.errors import ChainSyncJobNotFound, ConfigError, InvalidJobFile, TransformNotFound
from trace_core.runtime import Runtime

if TYPE_CHECKING:  # the spec's validators load DuckDB's SQL parser: not for status reads
    from trace_core.transforms.spec import LoadedTransform, TransformSpec

TRANSFORM_NAMESPACE = uuid.UUID("8c1f4a9e-2b3d-4e6f-9a7b-1c2d3e4f5a6b")


def transform_id(org_id: str | uuid.UUID, name: str) -> uuid.UUID:
    """Deterministic id of a transform: its identity is ``(org_id, name)``."""
    return uuid.uuid5(TRANSFORM_NAMESPACE, f"transform:{org_id}:{name}")


@dataclass(frozen=True)
class ApplyResult:
    transform_id: uuid.UUID
    created: bool
    changed: bool
    bundle_sha256: str | None


@dataclass(frozen=True)
class TransformRow:
    transform_id: uuid.UUID
    name: str
    job_name: str
    chain_id: int
    inputs: list[str]
    output_key: str
    code_kind: str
    bundle_sha256: str | None
    on_input: bool
    cron: str | None
    webhook: bool
    manual: bool
    enabled: bool
    spec: dict[str, Any]
    org_id: uuid.UUID | None = None
    source_file: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def model(self) -> TransformSpec:
        from trace_core.transforms.spec import TransformSpec

        return TransformSpec.model_validate(self.spec, strict=False)

    @property
    def sql(self) -> str | None:
        return self.model().code.sql

    def code_digest(self) -> str:
        """What identifies the code: the bundle's sha256, or the SQL text's."""
        if self.bundle_sha256 is not None:
            return self.bundle_sha256
        return hashlib.sha256((self.sql or "").encode()).hexdigest()

    def as_json(self) -> dict[str, Any]:
        return {
            "transform_id": str(self.transform_id),
            "name": self.name,
            "job": self.job_name,
            "chain_id": self.chain_id,
            "inputs": list(self.inputs),
            "output": self.output_key,
            "code": self.code_kind,
            "bundle_sha256": self.bundle_sha256,
            "trigger": {
                "on_input": self.on_input,
                "cron": self.cron,
                "webhook": self.webhook,
                "manual": self.manual,
            },
            "enabled": self.enabled,
        }


def _check(conn: Connection[Any], org_id: str | uuid.UUID, loaded: LoadedTransform) -> int:
    """The job's chain id, after checking inputs and output. Raises ``InvalidJobFile``."""
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
    streams = {s.dataset_key for s in chain_sync_store.list_streams(conn, org_id, job.job_id)}
    params = {"org_id": uuid.UUID(str(org_id)), "job_name": spec.job, "name": spec.name}
    outputs = {key: name for name, key in conn.execute(q("transforms", "outputs_of_job"), params)}
    problems: list[ConfigError] = []
    for i, key in enumerate(spec.inputs):
        if key not in streams and key not in outputs:
            known = ", ".join(sorted(streams | set(outputs)))
            problems.append(
                ConfigError(
                    f"job {spec.job!r} has no active stream or transform output {key!r} "
                    f"(known: {known})",
                    file=doc.source,
                    line=doc.line_of(("inputs", i)),
                    field=f"inputs[{i}]",
                )
            )
    out_line = doc.line_of(("output",))
    if spec.output in streams:
        problems.append(
            ConfigError(
                f"{spec.output!r} is a stream of job {spec.job!r}",
                file=doc.source,
                line=out_line,
                field="output",
            )
        )
    owner = conn.execute(
        q("transforms", "output_owner"),
        {**params, "chain_id": job.chain_id, "output_key": spec.output},
    ).fetchone()
    if owner is not None:
        problems.append(
            ConfigError(
                f"transform {owner[0]!r} already writes {spec.output!r} on chain {job.chain_id}",
                file=doc.source,
                line=out_line,
                field="output",
            )
        )
    if problems:
        raise InvalidJobFile(problems)
    return job.chain_id


def apply_transform(
    rt: Runtime, loaded: LoadedTransform, source_file: str | None = None
) -> ApplyResult:
    """Create or update the transform in ``loaded`` (idempotent): bundle first, then the row.

    Raises ``ConfigError``/``InvalidJobFile`` naming the file line when the job, an input or
    the output is wrong; nothing is written then (the bundle is content-addressed and
    unreferenced, so harmless).
    """
    from trace_core.udf.bundles import put_bundle

    name = f"transform:{loaded.spec.name}"
    with rt.state() as conn:
        return apply_transform_in(
            conn,
            rt.settings.org_id,
            loaded,
            source_file,
            bundles=lambda source: put_bundle(rt, source, name=name),
        )


def apply_transform_in(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    loaded: LoadedTransform,
    source_file: str | None = None,
    *,
    bundles: Callable[[str], str] | None = None,
) -> ApplyResult:
    """``apply_transform`` on the caller's connection and org (the HTTP API): a Python UDF is
    stored through ``bundles`` (source -> sha256); without it only SQL transforms apply."""
    spec = loaded.spec
    tid = transform_id(org_id, spec.name)
    with conn.transaction():
        chain_id = _check(conn, org_id, loaded)
    sha = None
    if loaded.python_source is not None:
        if bundles is None:
            raise ConfigError(
                "a Python transform needs its bundle stored (apply with trace-lite apply)",
                file=loaded.doc.source,
                field="code.python",
            )
        sha = bundles(loaded.python_source)
    with conn.transaction():
        row = conn.execute(
            q("transforms", "upsert_definition"),
            {
                "transform_id": tid,
                "org_id": uuid.UUID(str(org_id)),
                "name": spec.name,
                "job_name": spec.job,
                "chain_id": chain_id,
                "inputs": list(spec.inputs),
                "output_key": spec.output,
                "code_kind": "python" if sha is not None else "sql",
                "bundle_sha256": sha,
                "on_input": spec.trigger.on_input,
                "cron": spec.trigger.cron,
                "webhook": spec.trigger.webhook,
                "manual": spec.trigger.manual,
                "enabled": spec.enabled,
                "spec": Jsonb(spec.model_dump(mode="json")),
                "yaml_hash": chain_sync_store.yaml_hash(loaded.raw),
                "source_file": source_file,
            },
        ).fetchone()
    if row is None:
        return ApplyResult(tid, created=False, changed=False, bundle_sha256=sha)
    return ApplyResult(tid, created=bool(row[0]), changed=True, bundle_sha256=sha)


def list_transforms(
    conn: Connection[Any], org_id: str | uuid.UUID, *, name: str | None = None
) -> list[TransformRow]:
    """Transform definitions of the org (optionally one), by name."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            q("transforms", "list_definitions"),
            {"org_id": uuid.UUID(str(org_id)), "name": name},
        ).fetchall()
    return [TransformRow(**r) for r in rows]


def get_transform(conn: Connection[Any], org_id: str | uuid.UUID, name: str) -> TransformRow:
    """One transform by name. Raises ``TransformNotFound``."""
    rows = list_transforms(conn, org_id, name=name)
    if not rows:
        raise TransformNotFound(f"no transform job named {name!r}", job=name)
    return rows[0]


def routed_transforms(
    conn: Connection[Any], org_id: str | uuid.UUID, job_name: str, dataset_key: str
) -> list[TransformRow]:
    """Enabled on-input transforms of ``job_name`` that read ``dataset_key``."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            q("transforms", "routed_transforms"),
            {"org_id": uuid.UUID(str(org_id)), "job_name": job_name, "dataset_key": dataset_key},
        ).fetchall()
    return [TransformRow(**r) for r in rows]


def output_keys(conn: Connection[Any], org_id: str | uuid.UUID, job_name: str) -> set[str]:
    """Datasets the job's transforms write (an input among them is not a stream)."""
    params = {"org_id": uuid.UUID(str(org_id)), "job_name": job_name, "name": ""}
    return {key for _name, key in conn.execute(q("transforms", "outputs_of_job"), params)}
