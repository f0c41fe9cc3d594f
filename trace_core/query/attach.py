"""Trusted attach: turn grants into registered dataset versions and validated file lists.

Untrusted SQL never names a file. This module decides which objects a query may read:

1. grants -> versions, from Postgres state only: a user token sees the latest committed
   versions per range of its org's datasets (``job`` restricts to that job's streams); a task
   token sees exactly the versions it pins. A grant the registry does not hold -> 403.
2. versions -> manifests, fetched with a size cap and checked strictly (unknown fields, ids
   equal to the registry row, every key under the version's prefix and ending ``.parquet``,
   a file-count cap, local files inside the prefix directory) -> 422 (413 past the size cap).
3. relations: one per dataset key, the union of its versions' files, optionally plus a hot
   Postgres table for blocks beyond the last cold one (``HotSource``).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from psycopg import Connection, sql
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trace_core.db.queries import q
from trace_core.errors import (
    AccessDenied,
    InvalidObjectKey,
    ManifestInvalid,
    ObjectNotFound,
    ObjectTooLarge,
    QueryError,
    TooLarge,
)
from trace_core.query.tokens import TaskClaims, UserClaims

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1


class ObjectReader(Protocol):
    """The part of ``trace_core.storage.base.ObjectStore`` attach needs."""

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes: ...

    def duckdb_uri(self, key: str) -> str: ...


@dataclass(frozen=True)
class VersionRef:
    """A committed dataset version as the registry records it."""

    relation: str
    dataset_uuid: uuid.UUID
    dataset_version: uuid.UUID
    chain_id: int
    range_start: int
    range_end: int
    storage_prefix: str
    manifest_key: str
    created_at: datetime | None = None


@dataclass(frozen=True)
class HotSource:
    """Rows of a Postgres table ``schema.table`` with ``block_number >= min_block``.

    ``url`` is a libpq URL (a secret: kept out of repr and logs). ``chain_id`` optionally
    restricts the rows to one chain.
    """

    url: str = field(repr=False)
    table: str
    min_block: int
    chain_id: int | None = None


HotSourceResolver = Callable[[str, Sequence[VersionRef]], Sequence[HotSource]]


@dataclass(frozen=True)
class Relation:
    """What one relation name reads: exact file URIs and optional hot sources."""

    name: str
    files: tuple[str, ...]
    versions: tuple[VersionRef, ...]
    hot: tuple[HotSource, ...] = ()


# --- grants -> versions ----------------------------------------------------------------


def latest_per_range(versions: Iterable[VersionRef]) -> list[VersionRef]:
    """Newest version wins: per dataset, keep versions newest-first unless they overlap one
    already kept. Pure; the resolution policy lives here so it can change in one place."""
    by_dataset: dict[uuid.UUID, list[VersionRef]] = defaultdict(list)
    for ref in versions:
        by_dataset[ref.dataset_uuid].append(ref)
    chosen: list[VersionRef] = []
    for refs in by_dataset.values():
        kept: list[VersionRef] = []
        newest_first = sorted(
            refs, key=lambda r: (r.created_at or datetime.min, str(r.dataset_version)), reverse=True
        )
        for ref in newest_first:
            if all(ref.range_end <= k.range_start or ref.range_start >= k.range_end for k in kept):
                kept.append(ref)
        chosen.extend(kept)
    chosen.sort(key=lambda r: (r.relation, r.chain_id, r.range_start, str(r.dataset_uuid)))
    return chosen


def user_versions(
    conn: Connection[Any],
    claims: UserClaims,
    *,
    requested: Sequence[str] | None = None,
    job: str | None = None,
) -> dict[str, list[VersionRef]]:
    """Relations a user query may read, by name (the stream/dataset key).

    Raises ``AccessDenied`` for a requested name the token does not grant or the registry
    does not hold, and ``QueryError(code='job_not_found')`` for an unknown job.
    """
    params = {"org_id": claims.org_id, "job": job}
    if job is not None:
        if conn.execute(q("query", "job_exists"), params).fetchone() is None:
            raise QueryError(f"no job named {job!r}", code="job_not_found")
        rows = conn.execute(q("query", "job_versions"), params).fetchall()
    else:
        rows = conn.execute(q("query", "org_versions"), params).fetchall()
    registered: dict[str, list[VersionRef]] = defaultdict(list)
    for row in rows:
        registered[row[0]].append(_ref(row))
    names = set(registered) if requested is None else set(requested)
    out: dict[str, list[VersionRef]] = {}
    for name in sorted(names):
        if not claims.grants(name):
            if requested is None:
                continue
            raise AccessDenied(f"dataset {name!r} is not granted")
        if name not in registered:
            raise AccessDenied(f"dataset {name!r} is not registered")
        out[name] = latest_per_range(registered[name])
    return out


def task_versions(conn: Connection[Any], claims: TaskClaims) -> dict[str, list[VersionRef]]:
    """Relations of a task capability: exactly the pinned versions, grouped by dataset key.

    Raises ``AccessDenied`` when a pin is not registered, belongs to another org, or names
    a different dataset or manifest than the registry.
    """
    pins = {pin.dataset_version: pin for pin in claims.datasets}
    rows = conn.execute(q("query", "pinned_versions"), {"versions": list(pins)}).fetchall()
    found = {row[3]: row for row in rows}
    out: dict[str, list[VersionRef]] = defaultdict(list)
    for version, pin in pins.items():
        row = found.get(version)
        if (
            row is None
            or row[0] != claims.org_id
            or row[2] != pin.dataset_uuid
            or row[8] != pin.manifest_key
        ):
            raise AccessDenied(f"dataset version {version} is not registered for this grant")
        ref = _ref(row[1:])
        out[ref.relation].append(ref)
    return {name: sorted(refs, key=lambda r: (r.chain_id, r.range_start)) for name, refs in out.items()}


def _ref(row: Sequence[Any]) -> VersionRef:
    return VersionRef(
        relation=row[0],
        dataset_uuid=row[1],
        dataset_version=row[2],
        chain_id=int(row[3]),
        range_start=int(row[4]),
        range_end=int(row[5]),
        storage_prefix=row[6],
        manifest_key=row[7],
        created_at=row[8],
    )


# --- versions -> manifests ---------------------------------------------------------------


class ManifestFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    size: int = Field(ge=0)
    sha256: str
    rows: int = Field(ge=0)


class Manifest(BaseModel):
    """``_manifest.json`` version 1, written by trusted code, read here as untrusted input."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    version: Literal[1]
    dataset_uuid: uuid.UUID
    dataset_version: uuid.UUID
    chain_id: int
    dataset_key: str
    range_start: int
    range_end: int
    config_hash: str
    schema_: Any = Field(alias="schema")
    schema_hash: str
    files: list[ManifestFile]
    parquet_keys: list[str]


class ManifestCache:
    """Validated file URIs per (version, manifest key). Versions are immutable, so entries
    never go stale; the cache is bounded and thread-safe."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._entries: OrderedDict[tuple[uuid.UUID, str], tuple[str, ...]] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def get(self, ref: VersionRef) -> tuple[str, ...] | None:
        with self._lock:
            key = (ref.dataset_version, ref.manifest_key)
            files = self._entries.get(key)
            if files is not None:
                self._entries.move_to_end(key)
            return files

    def put(self, ref: VersionRef, files: tuple[str, ...]) -> None:
        with self._lock:
            self._entries[(ref.dataset_version, ref.manifest_key)] = files
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)


def load_manifest(store: ObjectReader, ref: VersionRef, *, max_bytes: int) -> Manifest:
    """Fetch and parse one manifest. Raises ``TooLarge`` past ``max_bytes`` and
    ``ManifestInvalid`` when it is missing, not JSON, or not the v1 schema."""
    if not ref.storage_prefix.endswith("/") or not ref.manifest_key.startswith(ref.storage_prefix):
        raise ManifestInvalid(f"dataset version {ref.dataset_version} has an inconsistent prefix")
    try:
        raw = store.get_bytes(ref.manifest_key, max_bytes=max_bytes)
    except ObjectTooLarge as exc:
        raise TooLarge(f"manifest of {ref.dataset_version} is larger than {max_bytes} bytes") from exc
    except (ObjectNotFound, InvalidObjectKey) as exc:
        raise ManifestInvalid(f"manifest of {ref.dataset_version} is missing") from exc
    if len(raw) > max_bytes:
        raise TooLarge(f"manifest of {ref.dataset_version} is larger than {max_bytes} bytes")
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in err["loc"]) or "<root>" for err in exc.errors()})
        raise ManifestInvalid(
            f"manifest of {ref.dataset_version} is malformed (fields: {', '.join(fields[:5])})"
        ) from exc


def manifest_files(
    store: ObjectReader, ref: VersionRef, manifest: Manifest, *, max_files: int
) -> tuple[str, ...]:
    """The DuckDB URIs of a manifest's Parquet files after every check. Raises
    ``ManifestInvalid``. Local files are made read-only."""
    where = f"manifest of {ref.dataset_version}"
    expected = (
        ref.dataset_uuid, ref.dataset_version, ref.chain_id, ref.relation, ref.range_start, ref.range_end
    )
    actual = (
        manifest.dataset_uuid, manifest.dataset_version, manifest.chain_id, manifest.dataset_key,
        manifest.range_start, manifest.range_end,
    )
    if actual != expected:
        raise ManifestInvalid(f"{where} does not describe the registered version")
    keys = manifest.parquet_keys
    if len(keys) > max_files:
        raise ManifestInvalid(f"{where} lists more than {max_files} files")
    if keys != sorted(set(keys)) or sorted(f.key for f in manifest.files) != keys:
        raise ManifestInvalid(f"{where} has inconsistent parquet_keys and files")
    prefix_dir: Path | None = None
    uris: list[str] = []
    for key in keys:
        if not key.startswith(ref.storage_prefix) or not key.lower().endswith(".parquet"):
            raise ManifestInvalid(f"{where} lists a key outside its prefix or not .parquet")
        try:
            uri = store.duckdb_uri(key)
        except InvalidObjectKey as exc:
            raise ManifestInvalid(f"{where} lists an invalid key") from exc
        if "://" not in uri:
            if prefix_dir is None:
                prefix_dir = _local_prefix_dir(store, ref)
            _check_local_file(Path(uri), prefix_dir, where)
        uris.append(uri)
    return tuple(uris)


def _local_prefix_dir(store: ObjectReader, ref: VersionRef) -> Path:
    manifest_path = Path(store.duckdb_uri(ref.manifest_key))
    depth = ref.manifest_key[len(ref.storage_prefix) :].count("/")
    return manifest_path.parents[depth].resolve()


def _check_local_file(path: Path, prefix_dir: Path, where: str) -> None:
    real = path.resolve()
    if not real.is_relative_to(prefix_dir):
        raise ManifestInvalid(f"{where} lists a file that resolves outside its prefix")
    try:
        st = real.stat()
    except FileNotFoundError as exc:
        raise ManifestInvalid(f"{where} lists a file that does not exist") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ManifestInvalid(f"{where} lists something that is not a file")
    if st.st_mode & 0o222:
        try:
            os.chmod(real, stat.S_IMODE(st.st_mode) & ~0o222)
        except PermissionError:
            log.debug("cannot make dataset file read-only", extra={"path": str(real)})


def attach(
    store: ObjectReader,
    versions: dict[str, list[VersionRef]],
    names: Iterable[str],
    *,
    max_manifest_bytes: int,
    max_files: int,
    cache: ManifestCache | None = None,
    hot: HotSourceResolver | None = None,
) -> list[Relation]:
    """Relations for ``names`` (a subset of ``versions``), manifests checked. Raises
    ``ManifestInvalid`` / ``TooLarge``; storage errors propagate."""
    out: list[Relation] = []
    for name in sorted(set(names)):
        refs = versions[name]
        files: list[str] = []
        for ref in refs:
            cached = cache.get(ref) if cache else None
            if cached is None:
                manifest = load_manifest(store, ref, max_bytes=max_manifest_bytes)
                cached = manifest_files(store, ref, manifest, max_files=max_files)
                if cache:
                    cache.put(ref, cached)
            files.extend(cached)
        sources = tuple(hot(name, refs)) if hot else ()
        out.append(Relation(name, tuple(files), tuple(refs), sources))
    return out


# --- hot tables --------------------------------------------------------------------------

HOT_TABLES = {"blocks": "hot_blocks", "transactions": "hot_transactions", "logs": "hot_logs"}
_HOT_ROWS_BEYOND = sql.SQL(
    "SELECT EXISTS (SELECT 1 FROM data.{} WHERE chain_id = %(chain_id)s AND block_number >= %(min_block)s)"
)


def data_hot_sources(pool: ConnectionPool[Any], url: str) -> HotSourceResolver:
    """Resolver for the block follower's ``data.hot_*`` tables: per chain, the hot rows at
    or beyond the end of the newest cold range, only when there are any."""

    def resolve(relation: str, refs: Sequence[VersionRef]) -> list[HotSource]:
        table = HOT_TABLES.get(relation)
        if table is None or not refs:
            return []
        cold_end: dict[int, int] = {}
        for ref in refs:
            cold_end[ref.chain_id] = max(cold_end.get(ref.chain_id, 0), ref.range_end)
        sources = []
        with pool.connection() as conn:
            for chain_id, end in sorted(cold_end.items()):
                row = conn.execute(
                    _HOT_ROWS_BEYOND.format(sql.Identifier(table)),
                    {"chain_id": chain_id, "min_block": end},
                ).fetchone()
                if row and row[0]:
                    sources.append(HotSource(url, f"data.{table}", end, chain_id))
        return sources

    return resolve


def audit_datasets(relations: Iterable[Relation]) -> list[dict[str, str]]:
    """The audit's view of what a query read: relation, dataset and version ids."""
    return [
        {"relation": rel.name, "dataset_uuid": str(ref.dataset_uuid), "dataset_version": str(ref.dataset_version)}
        for rel in relations
        for ref in rel.versions
    ]

