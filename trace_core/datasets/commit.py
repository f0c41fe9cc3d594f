"""The commit protocol: staged Parquet becomes visible only through a registered version.

1. The worker stages: Parquet files are uploaded under ``staging/{task_id}/{attempt}/``
   (``stage_parquet_files``). Nothing reads staging.
2. ``commit_dataset_version`` runs in ONE state transaction: ``fence`` (a stale attempt stops
   here and promotes nothing), a per-version advisory lock, then - unless the version is
   already registered - the staged objects are moved under the version prefix
   ``cryo/{chain}/{dataset_uuid}/{start}_{end}/{version}/``, ``_manifest.json`` is written
   last, the version is registered, and the task is finished.

Crash safety: objects move before the transaction commits. If it rolls back, the prefix holds
files (maybe a manifest) but no registry row, so no reader resolves it; the retry of the range
maps to the same version id and prefix and rewrites identical content. Once a version is
registered its objects are never written again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import Connection
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from trace_core import profile
from trace_core.datasets import events, ids
from trace_core.datasets.manifest import Column, DatasetManifest, ManifestFile
from trace_core.datasets.registry import VersionRecord, get_version
from trace_core.db.errors import translates_db_errors
from trace_core.db.queries import q
from trace_core.errors import ArtifactInvalid, DatasetConflict, StaleAttempt
from trace_core.storage.base import JSON, ObjectStore
from trace_core.tasks.lifecycle import Lease, check_fence, fence, finish_succeeded

log = logging.getLogger(__name__)

# Registry fields that must be identical when a version is registered a second time.
_IDENTITY_FIELDS = (
    "dataset_uuid",
    "chain_id",
    "range_start",
    "range_end",
    "config_hash",
    "schema_hash",
    "storage_prefix",
    "manifest_key",
    "row_count",
    "bytes",
    "file_count",
    "fake",
)


@dataclass(frozen=True)
class ParquetInfo:
    schema: tuple[Column, ...]
    rows: int


def describe_parquet(path: Path) -> ParquetInfo:
    """Schema and row count from a Parquet footer. Raises ``ArtifactInvalid`` if unreadable."""
    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as exc:
        raise ArtifactInvalid(
            f"{path.name} is not readable Parquet: {exc}", path=str(path)
        ) from exc
    return ParquetInfo(tuple(Column(f.name, str(f.type)) for f in schema), meta.num_rows)


@dataclass(frozen=True)
class StagedFile:
    name: str  # file name under the version prefix (no '/')
    staging_key: str
    size: int
    sha256: str
    rows: int


@dataclass(frozen=True)
class StagedOutput:
    """One attempt's uploaded output for one range, ready to commit."""

    task_id: uuid.UUID
    attempt: int
    org_id: str
    dataset_uuid: uuid.UUID
    dataset_key: str
    chain_id: int
    range_start: int
    range_end: int
    config_hash: str
    schema: tuple[Column, ...]
    files: tuple[StagedFile, ...]
    fake: bool = False  # made-up data: marked in the manifest and the registry row

    @property
    def dataset_version(self) -> uuid.UUID:
        return ids.dataset_version(
            self.dataset_uuid,
            self.config_hash,
            self.chain_id,
            self.range_start,
            self.range_end,
            fake=self.fake,
        )

    @property
    def prefix(self) -> str:
        return ids.version_prefix(
            self.chain_id, self.dataset_uuid, self.range_start, self.range_end, self.dataset_version
        )

    def manifest(self) -> DatasetManifest:
        prefix = self.prefix
        return DatasetManifest(
            dataset_uuid=self.dataset_uuid,
            dataset_version=self.dataset_version,
            chain_id=self.chain_id,
            dataset_key=self.dataset_key,
            range_start=self.range_start,
            range_end=self.range_end,
            config_hash=self.config_hash,
            schema=self.schema,
            fake=self.fake,
            files=tuple(
                sorted(
                    (ManifestFile(prefix + f.name, f.size, f.sha256, f.rows) for f in self.files),
                    key=lambda f: f.key,
                )
            ),
        )


@dataclass(frozen=True)
class CommittedVersion:
    """The registered version; ``newly_registered`` is False when it already existed."""

    record: VersionRecord
    newly_registered: bool

    def outputs(self) -> dict[str, Any]:
        """Task outputs (JSON-ready) describing the version."""
        rec = self.record
        return {
            "dataset_uuid": str(rec.dataset_uuid),
            "dataset_version": str(rec.dataset_version),
            "dataset_key": rec.dataset_key,
            "chain_id": rec.chain_id,
            "range_start": rec.range_start,
            "range_end": rec.range_end,
            "config_hash": rec.config_hash,
            "schema_hash": rec.schema_hash,
            "storage_prefix": rec.storage_prefix,
            "manifest_key": rec.manifest_key,
            "row_count": rec.row_count,
            "bytes": rec.bytes,
            "file_count": rec.file_count,
            "fake": rec.fake,
            "newly_registered": self.newly_registered,
        }


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def stage_parquet_files(
    store: ObjectStore, task_id: uuid.UUID, attempt: int, paths: Sequence[Path]
) -> tuple[tuple[Column, ...], tuple[StagedFile, ...]]:
    """Upload Parquet files under the attempt's staging prefix (streaming ``put_file``).

    Returns the common schema and the staged files sorted by name. Raises ``ArtifactInvalid``
    for no files, duplicate names, unreadable Parquet or files whose schemas differ.
    """
    if not paths:
        raise ArtifactInvalid("no Parquet files to stage")
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise ArtifactInvalid("two staged files share a name")
    prefix = ids.staging_prefix(task_id, attempt)
    schema: tuple[Column, ...] | None = None
    staged: list[StagedFile] = []
    for path in sorted(paths, key=lambda p: p.name):
        info = describe_parquet(path)
        if schema is None:
            schema = info.schema
        elif info.schema != schema:
            raise ArtifactInvalid(
                f"{path.name} has a different schema than its siblings", path=str(path)
            )
        key = prefix + path.name
        store.put_file(key, path)
        staged.append(StagedFile(path.name, key, path.stat().st_size, _sha256(path), info.rows))
    assert schema is not None
    return schema, tuple(staged)


def lock_version(conn: Connection[Any], dataset_version: uuid.UUID) -> None:
    """Serialise writers of one version until the caller's transaction ends (advisory lock)."""
    conn.execute(q("datasets", "lock_version"), {"dataset_version": dataset_version})


def lock_dataset_shared(conn: Connection[Any], dataset_uuid: uuid.UUID) -> None:
    """Hold the dataset's shared lock until the transaction ends: a compaction of the dataset
    (exclusive lock, ``datasets.compaction``) waits for this registration, or it for the
    compaction, so ``created_at`` (stamped at the insert) orders them as they committed."""
    conn.execute(q("datasets", "lock_dataset_shared"), {"dataset_uuid": dataset_uuid})


def _ensure_dataset(conn: Connection[Any], manifest: DatasetManifest, org_id: str) -> None:
    params = {
        "dataset_uuid": manifest.dataset_uuid,
        "org_id": uuid.UUID(str(org_id)),
        "chain_id": manifest.chain_id,
        "dataset_key": manifest.dataset_key,
    }
    row = conn.execute(q("datasets", "ensure_dataset"), params).fetchone()
    if row is None:
        raise DatasetConflict(
            f"dataset {manifest.dataset_key!r} on chain {manifest.chain_id} is registered under "
            f"another dataset_uuid than {manifest.dataset_uuid}",
            dataset_uuid=str(manifest.dataset_uuid),
        )
    existing = (row[1], row[2], row[3])
    if existing != (params["org_id"], params["chain_id"], params["dataset_key"]):
        raise DatasetConflict(
            f"dataset {manifest.dataset_uuid} is registered as {existing[2]!r} on chain "
            f"{existing[1]}, not {manifest.dataset_key!r} on chain {manifest.chain_id}",
            dataset_uuid=str(manifest.dataset_uuid),
        )


@translates_db_errors("dataset register_version")
def register_version(
    conn: Connection[Any],
    manifest: DatasetManifest,
    *,
    org_id: str,
    storage_prefix: str,
    manifest_key: str,
    task_id: uuid.UUID | None = None,
    attempt: int | None = None,
    locked: bool = False,
) -> CommittedVersion:
    """Register a version whose objects (manifest last) are already in the store.

    Idempotent: a second registration with identical fields returns the existing row
    (``newly_registered=False``); any difference raises ``DatasetConflict`` and the caller's
    transaction must roll back. Call inside the transaction that also completes the task;
    ``locked``: that transaction holds the version's and the dataset's locks already.
    """
    if not locked:
        lock_version(conn, manifest.dataset_version)
        lock_dataset_shared(conn, manifest.dataset_uuid)
    _ensure_dataset(conn, manifest, org_id)
    params = {
        "dataset_version": manifest.dataset_version,
        "dataset_uuid": manifest.dataset_uuid,
        "chain_id": manifest.chain_id,
        "range_start": manifest.range_start,
        "range_end": manifest.range_end,
        "config_hash": manifest.config_hash,
        "schema_hash": manifest.schema_hash,
        "storage_prefix": storage_prefix,
        "manifest_key": manifest_key,
        "row_count": manifest.row_count,
        "bytes": manifest.total_bytes,
        "file_count": len(manifest.files),
        "task_id": task_id,
        "attempt": attempt,
        "fake": manifest.fake,
    }
    with conn.cursor(row_factory=dict_row) as cur:
        inserted = cur.execute(q("datasets", "insert_version"), params).fetchone()
    if inserted is not None:
        return CommittedVersion(VersionRecord(**inserted), newly_registered=True)
    record = get_version(conn, manifest.dataset_version)
    if record is None:
        raise DatasetConflict(
            f"range [{manifest.range_start}, {manifest.range_end}) of dataset "
            f"{manifest.dataset_uuid} with config {manifest.config_hash!r} is registered under "
            f"another version than {manifest.dataset_version}",
            dataset_version=str(manifest.dataset_version),
        )
    _require_identical(record, params)
    return CommittedVersion(record, newly_registered=False)


def _require_identical(record: VersionRecord, params: dict[str, Any]) -> None:
    differing = [f for f in _IDENTITY_FIELDS if getattr(record, f) != params[f]]
    if differing:
        raise DatasetConflict(
            f"dataset version {record.dataset_version} is already registered with different "
            f"{', '.join(differing)}",
            dataset_version=str(record.dataset_version),
            fields=differing,
        )


def publish_objects(store: ObjectStore, staged: StagedOutput, manifest: DatasetManifest) -> None:
    """Move staged files under the version prefix and write the manifest last.

    Anything else already under the prefix (left by a rolled-back commit) is removed first.
    The caller holds the version lock and has checked that the version is not registered.
    """
    prefix = staged.prefix
    manifest_key = ids.manifest_key(prefix)
    wanted = {prefix + f.name for f in staged.files}
    store.delete(manifest_key)
    for info in store.list(prefix):
        if info.key not in wanted:
            store.delete(info.key)
    for f in staged.files:
        store.move(f.staging_key, prefix + f.name)
    store.put_bytes(manifest_key, manifest.to_json(), content_type=JSON)


@translates_db_errors("dataset commit_version")
def commit_version(
    conn: Connection[Any],
    store: ObjectStore,
    staged: StagedOutput,
    *,
    lease: Lease | None = None,
    announce: bool = False,
    job_name: str | None = None,
    on_registered: Callable[[Connection[Any], CommittedVersion], None] | None = None,
    guard: Callable[[Connection[Any]], None] | None = None,
) -> CommittedVersion:
    """The commit protocol, in one transaction on ``conn``: (fence) -> lock the version ->
    publish the staged objects unless the version is registered -> register -> (finish).

    With ``lease`` (a task's output) the attempt is fenced first, the version names the task,
    and the task is finished succeeded; without (the hot compactor) no task is involved.
    ``announce`` writes the version's ``dataset_version_committed`` event (naming ``job_name``
    when given; once per version); ``on_registered`` runs last in the transaction; ``guard``
    runs right after the version lock, before anything is published (it raises to abort).
    A version already registered keeps its objects; this attempt's staging is deleted.

    Raises ``StaleAttempt`` (nothing promoted) when ``lease`` is not the current attempt or
    ``staged`` belongs to another attempt, ``DatasetConflict`` when the range is registered
    with different content, ``StorageError`` when a move fails (retryable; the prefix stays
    unregistered).
    """
    if lease is not None and (staged.task_id, staged.attempt) != (lease.task_id, lease.attempt):
        raise StaleAttempt(
            lease.task_id, lease.attempt, f"staged output belongs to attempt {staged.attempt}"
        )
    manifest = staged.manifest()
    prefix = staged.prefix
    with _transaction(conn):
        with profile.phase("commit: lock"):
            existing = _fence_and_lock(conn, manifest, lease, guard)
        if existing is not None and existing.collected:
            # garbage-collected earlier: its objects are gone; publish again, serve as newest
            conn.execute(
                q("datasets", "revive_collected_version"),
                {"dataset_version": manifest.dataset_version},
            )
            existing = None
        if existing is None:
            with profile.phase("commit: publish"):
                publish_objects(store, staged, manifest)
        with profile.phase("commit: register"):
            committed = register_version(
                conn,
                manifest,
                org_id=staged.org_id,
                storage_prefix=prefix,
                manifest_key=ids.manifest_key(prefix),
                task_id=None if lease is None else lease.task_id,
                attempt=None if lease is None else lease.attempt,
                locked=True,
            )
        if existing is not None:
            # an earlier commit registered this range: its objects stay untouched
            store.delete_prefix(ids.staging_prefix(staged.task_id, staged.attempt))
        if announce:  # idempotent: the event's outbox id derives from the version
            with profile.phase("commit: announce"):
                events.announce_version_committed(
                    conn, committed.record.as_json(), job_name=job_name
                )
        if on_registered is not None:
            on_registered(conn, committed)
        if lease is not None:
            with profile.phase("commit: finish"):
                finish_succeeded(conn, lease, committed.outputs())
    log.info(
        "dataset version committed",
        extra={
            "task_id": str(staged.task_id),
            "attempt": staged.attempt,
            "dataset_version": str(manifest.dataset_version),
            "range": f"{staged.range_start}:{staged.range_end}",
            "new": committed.newly_registered,
        },
    )
    return committed


def _fence_and_lock(
    conn: Connection[Any],
    manifest: DatasetManifest,
    lease: Lease | None,
    guard: Callable[[Connection[Any]], None] | None,
) -> VersionRecord | None:
    """Fence (``lease``), lock the version (then ``guard``) and the dataset (shared), then read
    the version as registered: four statements in one round trip (pipelined) unless a guard
    runs in between. Each statement still runs on its own snapshot (read committed), so the
    read sees any registration that committed while this waited for the version lock."""
    version = {"dataset_version": manifest.dataset_version}
    if guard is not None:
        if lease is not None:
            fence(conn, lease)
        lock_version(conn, manifest.dataset_version)
        guard(conn)
        lock_dataset_shared(conn, manifest.dataset_uuid)
        return get_version(conn, manifest.dataset_version)
    with (
        conn.cursor(row_factory=dict_row) as task,
        conn.cursor(row_factory=dict_row) as registered,
    ):
        with conn.pipeline():
            if lease is not None:
                task.execute(q("tasks", "lock_task"), {"task_id": lease.task_id})
            conn.execute(q("datasets", "lock_version"), version)
            conn.execute(
                q("datasets", "lock_dataset_shared"), {"dataset_uuid": manifest.dataset_uuid}
            )
            registered.execute(q("datasets", "get_version"), version)
        if lease is not None:
            check_fence(task.fetchone(), lease)
        row = registered.fetchone()
    return None if row is None else VersionRecord(**row)


def _transaction(conn: Connection[Any]) -> contextlib.AbstractContextManager[Any]:
    """A transaction, unless ``conn`` is in one already: then no savepoint (two round trips)
    either, and an error must roll the caller's transaction back (every caller lets it out)."""
    if conn.info.transaction_status == TransactionStatus.INTRANS:
        return contextlib.nullcontext()
    return conn.transaction()


def commit_dataset_version(
    conn: Connection[Any], store: ObjectStore, lease: Lease, staged: StagedOutput
) -> CommittedVersion:
    """``commit_version`` of a task's output: fence, publish, register and finish the task."""
    return commit_version(conn, store, staged, lease=lease)
