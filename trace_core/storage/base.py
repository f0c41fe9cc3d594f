"""The ObjectStore protocol shared by the local directory store and S3/MinIO.

Keys are bucket-relative, '/'-separated paths (``cryo/1/<uuid>/0_1000/<version>/x.parquet``).
Writes are atomic per object: a reader sees the old object, the new one, or none, never a
partial one. ``list(prefix)`` matches a plain string prefix, as S3 does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from trace_core.errors import InvalidObjectKey

OCTET_STREAM = "application/octet-stream"
JSON = "application/json"

_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe object key, else raise ``InvalidObjectKey``.

    Refused: empty, a leading '/', a trailing '/', backslashes or control characters, and
    empty, '.' or '..' segments.
    """
    if not isinstance(key, str) or not key:
        raise InvalidObjectKey("object key must be a non-empty string", key=repr(key))
    if key.startswith("/") or key.endswith("/"):
        raise InvalidObjectKey(f"object key {key!r} must not start or end with '/'", key=key)
    if _BAD_CHARS.search(key):
        raise InvalidObjectKey(
            f"object key {key!r} contains a backslash or control character", key=key
        )
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidObjectKey(f"object key {key!r} has an empty, '.' or '..' segment", key=key)
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is '' or a safe key prefix (a trailing '/' is allowed)."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


@runtime_checkable
class ObjectStore(Protocol):
    """Blob storage for datasets and staging. ``url`` names the store (no secrets)."""

    url: str

    def put_bytes(self, key: str, data: bytes, content_type: str = OCTET_STREAM) -> None:
        """Write ``data`` at ``key`` atomically (replacing any object there)."""
        ...

    def put_file(self, key: str, path: Path, content_type: str = OCTET_STREAM) -> None:
        """Stream the local file ``path`` to ``key`` atomically, without loading it whole."""
        ...

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """Read ``key``. Raises ``ObjectNotFound``, or ``ObjectTooLarge`` past ``max_bytes``."""
        ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int:
        """Size in bytes. Raises ``ObjectNotFound``."""
        ...

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Objects whose key starts with ``prefix``, sorted by key."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing object is not an error."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix``; return how many were removed."""
        ...

    def copy(self, src: str, dst: str) -> None:
        """Copy ``src`` to ``dst`` (``dst`` replaced atomically). Raises ``ObjectNotFound``."""
        ...

    def move(self, src: str, dst: str) -> None:
        """Move ``src`` to ``dst``; afterwards ``src`` is gone. Raises ``ObjectNotFound``."""
        ...

    def duckdb_uri(self, key: str) -> str:
        """What DuckDB reads: an absolute local path or ``s3://bucket/key``."""
        ...

    def presign_get(self, key: str, expires_seconds: int = 3600) -> str | None:
        """A time-limited GET URL, or None when the store has no such notion (local)."""
        ...
