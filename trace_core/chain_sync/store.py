"""chain_sync jobs in Postgres state: apply (idempotent), pause/resume, listing.

``apply_job`` is one transaction keyed by ``(org_id, name)``: re-applying the same bytes writes
nothing; an edit updates the job and its streams but keeps every cursor (which never moves
backwards) and the paused flag. A stream dropped from the file becomes inactive and keeps its
cursor and ranges. ``chain_id`` and a stream's ``cryo_dataset_name`` cannot change in place:
the datasets already written would silently mix with different data.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from trace_core.chain_sync.spec import (
    ChainSyncSpec,
    FixedTarget,
    HotSpec,
    compacts,
    hot_start_block,
)
from trace_core.chain_sync.yamlload import load_job_file, load_yaml
from trace_core.datasets import ids
from trace_core.db.queries import q
from trace_core.errors import ChainSyncJobNotFound, ConfigError, InvalidJobFile
from trace_core.tasks.lifecycle import set_job_paused

log = logging.getLogger(__name__)

YAML_HASH_NAMESPACE = uuid.UUID("41915e64-16d8-4c48-8f6c-e48a0f4b620a")


def yaml_hash(raw: bytes) -> str:
    """Digest 6.4: UUIDv5 over the raw YAML bytes (a change detector, not a security hash)."""
    digest = hashlib.sha1(YAML_HASH_NAMESPACE.bytes + raw).digest()
    return str(uuid.UUID(bytes=digest[:16], version=5))


def stream_dataset_uuid(org_id: str | uuid.UUID, chain_id: int, dataset_key: str) -> uuid.UUID:
    """``dataset_uuid`` of a chain_sync stream (digest 6.4, ``trace_core.datasets.ids``)."""
    return ids.dataset_uuid(org_id, chain_id, dataset_key)


def stream_config_hash(
    cryo_dataset_name: str, cryo_options: Mapping[str, Any] | None = None
) -> str:
    """``config_hash`` of a chain_sync stream: ``cryo_ingest.{name}:v1``, plus a digest of
    its cryo options when any are set (``trace_core.datasets.ids.config_hash``)."""
    return ids.config_hash(cryo_dataset_name, cryo_options)


@dataclass(frozen=True)
class ApplyResult:
    job_id: uuid.UUID
    created: bool
    changed: bool


@dataclass(frozen=True)
class JobRow:
    job_id: uuid.UUID
    org_id: uuid.UUID
    name: str
    chain_id: int
    enabled: bool
    mode: str
    from_block: int
    to_block: int | None
    tail_lag: int | None
    head_poll_interval_seconds: int | None
    max_head_age_seconds: int | None
    finality_depth: int | None
    max_attempts: int | None
    epoch_blocks: int
    yaml_hash: str
    source_file: str | None
    last_error_kind: str | None
    last_error_message: str | None
    last_error_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class StreamRow:
    job_id: uuid.UUID
    job_name: str
    chain_id: int
    dataset_key: str
    cryo_dataset_name: str
    rpc_pool: str
    chunk_size: int
    max_inflight: int
    config_hash: str
    dataset_uuid: uuid.UUID
    cryo_options: dict[str, Any]
    active: bool
    next_block: int
    epoch_blocks: int  # the job's: one Dagster partition per epoch (chain_sync.epochs)


@dataclass(frozen=True)
class RangeRow:
    job_id: uuid.UUID
    job_name: str
    dataset_key: str
    range_start: int
    range_end: int
    task_id: uuid.UUID
    status: str
    dataset_version: uuid.UUID | None
    created_at: datetime
    completed_at: datetime | None


def _job_params(spec: ChainSyncSpec) -> dict[str, Any]:
    mode = spec.mode
    params: dict[str, Any] = {
        "name": spec.name,
        "chain_id": spec.chain_id,
        "mode": mode.kind,
        "from_block": mode.from_block,
        "to_block": None,
        "tail_lag": None,
        "head_poll_interval_seconds": None,
        "max_head_age_seconds": None,
        "finality_depth": spec.finality_depth,
        "max_attempts": spec.max_attempts,
        "epoch_blocks": spec.epoch_size,
        "spec": Jsonb(spec.model_dump(mode="json")),
    }
    if isinstance(mode, FixedTarget):
        params["to_block"] = mode.to_block
    else:
        params["tail_lag"] = mode.tail_lag
        params["head_poll_interval_seconds"] = mode.head_poll_interval_seconds
        params["max_head_age_seconds"] = mode.max_head_age_seconds
    return params


def apply_job(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    spec: ChainSyncSpec,
    raw_yaml: bytes | str,
    source_file: str | None = None,
) -> ApplyResult:
    """Create or update the job ``(org_id, spec.name)`` in one transaction.

    Same bytes as last time: nothing is written (``changed=False``). Raises ``InvalidJobFile``
    when the edit changes ``chain_id`` or an existing stream's ``cryo_dataset_name``; nothing is
    written then either.
    """
    raw = raw_yaml.encode() if isinstance(raw_yaml, str) else bytes(raw_yaml)
    digest = yaml_hash(raw)
    params = {
        **_job_params(spec),
        "org_id": org_id,
        "yaml_hash": digest,
        "source_file": source_file,
    }
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        existing = cur.execute(q("chain_sync", "lock_job_by_name"), params).fetchone()
        created = False
        if existing is None:
            row = cur.execute(
                q("chain_sync", "insert_job"), {**params, "job_id": uuid.uuid4()}
            ).fetchone()
            if row is not None:
                job_id, created = row["job_id"], True
            else:  # a concurrent apply created it first: treat as an edit of that row
                existing = cur.execute(q("chain_sync", "lock_job_by_name"), params).fetchone()
                assert existing is not None
        if existing is not None:
            job_id = existing["job_id"]
            if existing["yaml_hash"] == digest:
                if existing["source_file"] != source_file and source_file is not None:
                    cur.execute(
                        q("chain_sync", "update_source_file"),
                        {"job_id": job_id, "source_file": source_file},
                    )
                return ApplyResult(job_id, created=False, changed=False)
            _check_immutable(cur, job_id, existing["chain_id"], spec, raw, source_file)
            cur.execute(q("chain_sync", "update_job"), {**params, "job_id": job_id})
        _apply_streams(cur, org_id, job_id, spec)
    log.info(
        "chain_sync job applied",
        extra={"job_id": str(job_id), "job_name": spec.name, "job_created": created},
    )
    return ApplyResult(job_id, created=created, changed=True)


def _check_immutable(
    cur: Any, job_id: uuid.UUID, chain_id: int, spec: ChainSyncSpec, raw: bytes, source: str | None
) -> None:
    doc = load_yaml(raw, source=source or "<string>")
    problems: list[ConfigError] = []
    if chain_id != spec.chain_id:
        problems.append(
            ConfigError(
                f"cannot change from {chain_id} for an existing job (apply it under a new name)",
                file=doc.source,
                line=doc.line_of(("chain_id",)),
                field="chain_id",
            )
        )
    existing = {
        r["dataset_key"]: r["cryo_dataset_name"]
        for r in cur.execute(q("chain_sync", "job_stream_names"), {"job_id": job_id}).fetchall()
    }
    for key, stream in spec.streams.items():
        old = existing.get(key)
        if old is not None and old != stream.cryo_dataset_name:
            path = ("streams", key, "cryo_dataset_name")
            problems.append(
                ConfigError(
                    f"cannot change from {old!r} for an existing stream (use a new dataset key)",
                    file=doc.source,
                    line=doc.line_of(path),
                    field=".".join(path),
                )
            )
    if problems:
        raise InvalidJobFile(problems)


def _apply_streams(
    cur: Any, org_id: str | uuid.UUID, job_id: uuid.UUID, spec: ChainSyncSpec
) -> None:
    for key, stream in spec.streams.items():
        dataset_uuid = stream_dataset_uuid(org_id, spec.chain_id, key)
        cur.execute(
            q("chain_sync", "upsert_stream"),
            {
                "job_id": job_id,
                "dataset_key": key,
                "cryo_dataset_name": stream.cryo_dataset_name,
                "rpc_pool": stream.rpc_pool,
                "chunk_size": stream.chunk_size,
                "max_inflight": stream.max_inflight,
                "config_hash": stream_config_hash(
                    stream.cryo_dataset_name, stream.cryo_options.as_kwargs()
                ),
                "dataset_uuid": dataset_uuid,
                "cryo_options": Jsonb(stream.cryo_options.as_kwargs()),
            },
        )
        cur.execute(
            q("chain_sync", "upsert_cursor"),
            {"job_id": job_id, "dataset_key": key, "from_block": spec.mode.from_block},
        )
        cur.execute(
            q("chain_sync", "register_dataset"),
            {
                "dataset_uuid": dataset_uuid,
                "org_id": org_id,
                "chain_id": spec.chain_id,
                "dataset_key": key,
            },
        )
    cur.execute(
        q("chain_sync", "deactivate_missing_streams"),
        {"job_id": job_id, "keys": list(spec.streams)},
    )


def apply_job_file(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    path: str | Path,
    *,
    require_pools: bool = False,
    environ: Mapping[str, str] | None = None,
) -> ApplyResult:
    """Load, validate and apply a job file. Raises ``ConfigError`` before writing anything."""
    spec, raw = load_job_file(path, require_pools=require_pools, environ=environ)
    return apply_job(conn, org_id, spec, raw, str(path))


def resolve_job(conn: Connection[Any], org_id: str | uuid.UUID, job: str | uuid.UUID) -> uuid.UUID:
    """A job id from a job id or name. Raises ``ChainSyncJobNotFound``."""
    as_id: uuid.UUID | None
    try:
        as_id = job if isinstance(job, uuid.UUID) else uuid.UUID(str(job))
    except ValueError:
        as_id = None
    if as_id is not None:
        row = conn.execute(
            q("chain_sync", "find_job_by_id"), {"org_id": org_id, "job_id": as_id}
        ).fetchone()
        if row is not None:
            return row[0]  # type: ignore[no-any-return]
    row = conn.execute(
        q("chain_sync", "find_job_by_name"), {"org_id": org_id, "name": str(job)}
    ).fetchone()
    if row is None:
        raise ChainSyncJobNotFound(job)
    return row[0]  # type: ignore[no-any-return]


def set_enabled(
    conn: Connection[Any], org_id: str | uuid.UUID, job: str | uuid.UUID, enabled: bool
) -> uuid.UUID:
    """Pause (``enabled=False``) or resume a job by name or id; returns its id.

    Pausing stops planning and head polling and marks the job's queued tasks paused (they are
    not claimed; running ones finish). Resuming re-wakes them through the outbox. Idempotent.
    Raises ``ChainSyncJobNotFound``.
    """
    with conn.transaction():
        job_id = resolve_job(conn, org_id, job)
        changed = conn.execute(
            q("chain_sync", "set_enabled"), {"job_id": job_id, "enabled": enabled}
        ).fetchone()
        tasks = set_job_paused(conn, job_id, not enabled)
    if changed is not None:
        log.info(
            "chain_sync job %s",
            "resumed" if enabled else "paused",
            extra={"job_id": str(job_id), "tasks": tasks},
        )
    return job_id


def pause_job(conn: Connection[Any], org_id: str | uuid.UUID, job: str | uuid.UUID) -> uuid.UUID:
    """``set_enabled(..., False)``."""
    return set_enabled(conn, org_id, job, False)


def resume_job(conn: Connection[Any], org_id: str | uuid.UUID, job: str | uuid.UUID) -> uuid.UUID:
    """``set_enabled(..., True)``."""
    return set_enabled(conn, org_id, job, True)


def list_jobs(conn: Connection[Any], org_id: str | uuid.UUID) -> list[JobRow]:
    """Every job of the org, most recently updated first."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            q("chain_sync", "list_jobs"), {"org_id": org_id, "job_id": None}
        ).fetchall()
    return [JobRow(**r) for r in rows]


def get_job(conn: Connection[Any], org_id: str | uuid.UUID, job: str | uuid.UUID) -> JobRow:
    """One job by name or id. Raises ``ChainSyncJobNotFound``."""
    job_id = resolve_job(conn, org_id, job)
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            q("chain_sync", "list_jobs"), {"org_id": org_id, "job_id": job_id}
        ).fetchone()
    if row is None:
        raise ChainSyncJobNotFound(job)
    return JobRow(**row)


def list_streams(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    job: str | uuid.UUID | None = None,
    *,
    include_inactive: bool = False,
) -> list[StreamRow]:
    """Streams (with cursors) of one job or of every job in the org, by job name then key."""
    job_id = resolve_job(conn, org_id, job) if job is not None else None
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            q("chain_sync", "list_streams"),
            {"org_id": org_id, "job_id": job_id, "include_inactive": include_inactive},
        ).fetchall()
    return [StreamRow(**r) for r in rows]


def list_ranges(
    conn: Connection[Any],
    job_id: uuid.UUID,
    dataset_key: str | None = None,
    *,
    status: str | None = None,
) -> list[RangeRow]:
    """Planned ranges of a job (optionally one stream / one status), by key and start.

    The Dagster side uses this to rebuild a stream's dynamic partitions.
    """
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            q("chain_sync", "list_ranges"),
            {"job_id": job_id, "dataset_key": dataset_key, "status": status},
        ).fetchall()
    return [RangeRow(**r) for r in rows]


@dataclass(frozen=True)
class HotJob:
    """A job with a ``hot:`` block, as the hot sensors and ``status`` see it.

    ``observed_head``: newest head any pool reported for the chain (head observer or
    follower); ``hot_cursor``/``hot_first_block``: the org's follower cursor on the chain
    (shared by every job of the org on the chain), None before the first committed step.
    """

    job_id: uuid.UUID
    name: str
    chain_id: int
    enabled: bool
    mode: str
    from_block: int
    to_block: int | None
    tail_lag: int | None
    hot: HotSpec
    observed_head: int | None
    hot_first_block: int | None
    hot_cursor: int | None
    org_id: uuid.UUID

    @property
    def compact(self) -> bool:
        """Whether the compactor compacts this job's chain (``spec.compacts``)."""
        return compacts(self.mode, self.hot.compact)

    @property
    def start_block(self) -> int | None:
        """Where the follower starts the chain if it has no cursor (``spec.hot_start_block``)."""
        return hot_start_block(
            self.mode,
            from_block=self.from_block,
            to_block=self.to_block,
            tail_lag=self.tail_lag,
            observed_head=self.observed_head,
        )

    @property
    def lag_blocks(self) -> int | None:
        """Blocks between the observed head and the follower's cursor (None if either unknown)."""
        if self.observed_head is None or self.hot_cursor is None:
            return None
        return max(0, self.observed_head - self.hot_cursor)


def list_hot_jobs(
    conn: Connection[Any],
    org_id: str | uuid.UUID | None,
    job: str | uuid.UUID | None = None,
    *,
    enabled_only: bool = False,
) -> list[HotJob]:
    """Jobs of the org (or one job) that have a ``hot:`` block, by chain, org, then name.
    ``org_id`` None: every org's (the hot services, which run per (org, chain)).

    Raises ``ChainSyncJobNotFound`` for an unknown ``job``.
    """
    if org_id is None and job is not None:
        raise ValueError("list_hot_jobs: a job is named within an org")
    job_id = resolve_job(conn, org_id, job) if job is not None and org_id is not None else None
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            q("chain_sync", "hot_jobs"),
            {"org_id": org_id, "job_id": job_id, "enabled_only": enabled_only},
        ).fetchall()
    return [HotJob(**{**r, "hot": HotSpec.model_validate(r["hot"])}) for r in rows]
