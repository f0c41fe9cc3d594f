"""``_manifest.json``: the file list and schema of one committed dataset version.

Written by trusted code as the last object of a version prefix; read back as untrusted input:
``parse_manifest`` enforces a size cap, a strict schema (unknown fields rejected), and that
every key lies under the version's prefix. Serialisation is canonical (sorted keys, fixed
separators), so the same version always yields byte-identical manifests.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trace_core.datasets.ids import canonical_json
from trace_core.errors import InvalidObjectKey, ManifestInvalid, ObjectTooLarge
from trace_core.storage.base import ObjectStore, validate_key

MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

_FIELDS = {
    "version",
    "dataset_uuid",
    "dataset_version",
    "chain_id",
    "dataset_key",
    "range_start",
    "range_end",
    "config_hash",
    "schema",
    "schema_hash",
    "files",
    "parquet_keys",
    "fake",
}
_LEGACY_KEYS = "parquet_objects"


@dataclass(frozen=True)
class Column:
    """One Parquet column: its name and Arrow type string (``uint32``, ``large_binary``)."""

    name: str
    type: str


@dataclass(frozen=True)
class ManifestFile:
    key: str  # bucket-relative object key under the version prefix
    size: int
    sha256: str
    rows: int


def schema_hash(schema: Sequence[Column]) -> str:
    """sha256 hex of the canonical JSON ``[[name, type], ...]``."""
    return hashlib.sha256(canonical_json([[c.name, c.type] for c in schema]).encode()).hexdigest()


@dataclass(frozen=True)
class DatasetManifest:
    """Manifest v1. ``files`` sorted by key; ``parquet_keys`` is derived from it."""

    dataset_uuid: uuid.UUID
    dataset_version: uuid.UUID
    chain_id: int
    dataset_key: str
    range_start: int
    range_end: int
    config_hash: str
    schema: tuple[Column, ...]
    files: tuple[ManifestFile, ...]
    version: int = MANIFEST_VERSION
    fake: bool = False  # made-up data (TRACE_CRYO_MODE=fake); written only when true

    @property
    def parquet_keys(self) -> list[str]:
        return sorted({f.key for f in self.files})

    @property
    def schema_hash(self) -> str:
        return schema_hash(self.schema)

    @property
    def row_count(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"fake": True} if self.fake else {}
        return out | {
            "version": self.version,
            "dataset_uuid": str(self.dataset_uuid),
            "dataset_version": str(self.dataset_version),
            "chain_id": self.chain_id,
            "dataset_key": self.dataset_key,
            "range_start": self.range_start,
            "range_end": self.range_end,
            "config_hash": self.config_hash,
            "schema": [{"name": c.name, "type": c.type} for c in self.schema],
            "schema_hash": self.schema_hash,
            "files": [
                {"key": f.key, "size": f.size, "sha256": f.sha256, "rows": f.rows}
                for f in sorted(self.files, key=lambda f: f.key)
            ],
            "parquet_keys": self.parquet_keys,
        }

    def to_json(self) -> bytes:
        return (canonical_json(self.to_dict()) + "\n").encode()


def _need(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(name)
    is_bool = isinstance(value, bool) and kind is not bool
    if value is None or is_bool or not isinstance(value, kind):
        raise ManifestInvalid(f"manifest field {name!r} is missing or not {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _uuid(obj: Mapping[str, Any], name: str) -> uuid.UUID:
    try:
        return uuid.UUID(_need(obj, name, str))
    except ValueError:
        raise ManifestInvalid(f"manifest field {name!r} is not a UUID") from None


def _count(obj: Mapping[str, Any], name: str) -> int:
    value = _need(obj, name, int)
    if value < 0:
        raise ManifestInvalid(f"manifest field {name!r} is negative")
    return int(value)


def parse_manifest(data: bytes, *, prefix: str | None = None) -> DatasetManifest:
    """Parse and validate manifest bytes. Raises ``ManifestInvalid`` naming the broken field.

    With ``prefix``, every key must lie directly under it (no nested or foreign keys).
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestInvalid(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestInvalid(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ManifestInvalid("manifest must be a JSON object")
    if _LEGACY_KEYS in obj and "parquet_keys" not in obj:
        obj["parquet_keys"] = obj.pop(_LEGACY_KEYS)
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise ManifestInvalid(f"manifest has unknown fields: {', '.join(unknown)}")
    if _need(obj, "version", int) != MANIFEST_VERSION:
        raise ManifestInvalid(f"manifest version must be {MANIFEST_VERSION}")
    schema = tuple(_column(c) for c in _need(obj, "schema", list))
    files = tuple(_file(f, prefix) for f in _need(obj, "files", list))
    manifest = DatasetManifest(
        dataset_uuid=_uuid(obj, "dataset_uuid"),
        dataset_version=_uuid(obj, "dataset_version"),
        chain_id=_count(obj, "chain_id"),
        dataset_key=_need(obj, "dataset_key", str),
        range_start=_count(obj, "range_start"),
        range_end=_count(obj, "range_end"),
        config_hash=_need(obj, "config_hash", str),
        schema=schema,
        files=tuple(sorted(files, key=lambda f: f.key)),
        fake=_need(obj, "fake", bool) if "fake" in obj else False,
    )
    if manifest.range_end <= manifest.range_start:
        raise ManifestInvalid("manifest range_end must be greater than range_start")
    if len({f.key for f in files}) != len(files):
        raise ManifestInvalid("manifest lists a file twice")
    if _need(obj, "parquet_keys", list) != manifest.parquet_keys:
        raise ManifestInvalid("manifest parquet_keys do not match its files")
    if _need(obj, "schema_hash", str) != manifest.schema_hash:
        raise ManifestInvalid("manifest schema_hash does not match its schema")
    return manifest


def _column(value: Any) -> Column:
    if not isinstance(value, dict) or set(value) != {"name", "type"}:
        raise ManifestInvalid("manifest schema entries must be {name, type} objects")
    return Column(_need(value, "name", str), _need(value, "type", str))


def _file(value: Any, prefix: str | None) -> ManifestFile:
    if not isinstance(value, dict) or set(value) != {"key", "size", "sha256", "rows"}:
        raise ManifestInvalid("manifest files entries must be {key, size, sha256, rows} objects")
    key = _need(value, "key", str)
    try:
        validate_key(key)
    except InvalidObjectKey as exc:
        raise ManifestInvalid(f"manifest file key {key!r} is not a valid object key") from exc
    if prefix is not None and (not key.startswith(prefix) or "/" in key[len(prefix) :]):
        raise ManifestInvalid(f"manifest file key {key!r} is outside the version prefix")
    if not key.endswith(".parquet"):
        raise ManifestInvalid(f"manifest file key {key!r} is not a .parquet object")
    sha = _need(value, "sha256", str)
    if len(sha) != 64 or any(ch not in "0123456789abcdef" for ch in sha):
        raise ManifestInvalid(f"manifest sha256 of {key!r} is not 64 lowercase hex digits")
    return ManifestFile(key, _count(value, "size"), sha, _count(value, "rows"))


def load_manifest(
    store: ObjectStore, manifest_key: str, *, prefix: str | None = None
) -> DatasetManifest:
    """Read and parse a manifest from the store under the size cap.

    Raises ``ObjectNotFound`` or ``ManifestInvalid`` (an oversized object included).
    """
    try:
        data = store.get_bytes(manifest_key, max_bytes=MAX_MANIFEST_BYTES)
    except ObjectTooLarge as exc:
        raise ManifestInvalid(
            f"manifest {manifest_key!r} is larger than {MAX_MANIFEST_BYTES} bytes"
        ) from exc
    return parse_manifest(data, prefix=prefix)
