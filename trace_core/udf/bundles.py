"""Content-addressed UDF code bundles.

A bundle is the UDF's Python source, stored once in the object store under
``udf/bundles/<sha256>.py`` and recorded in ``state.udf_bundles``; its sha256 is the
bundle's identity, so a task that records it pins exactly the code it ran. ``put_bundle``
with a ``name`` (a job's code file) also numbers the versions of that name
(``state.udf_bundle_versions``: version 1, 2, ... each time the code changes).
``get_bundle`` re-hashes what it reads, so a tampered or corrupted object is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from trace_core.db.queries import q
from trace_core.errors import FatalError, ObjectNotFound
from trace_core.storage.base import OCTET_STREAM
from trace_core.udf.payload import source_sha256

if TYPE_CHECKING:
    from trace_core.runtime import Runtime

BUNDLE_PREFIX = "udf/bundles/"
MAX_BUNDLE_BYTES = 4 * 1024 * 1024


class BundleNotFound(FatalError):
    """No bundle with this sha256 (in this org)."""

    code = "udf_bundle_not_found"


class BundleCorrupt(FatalError):
    """A stored bundle whose bytes no longer hash to its key."""

    code = "udf_bundle_corrupt"


@dataclass(frozen=True)
class BundleVersion:
    version: int
    sha256: str
    created_at: datetime


def bundle_key(sha256: str) -> str:
    return f"{BUNDLE_PREFIX}{sha256}.py"


def put_bundle(runtime: Runtime, source: str, *, name: str | None = None) -> str:
    """Store ``source`` (idempotent) and return its sha256. With ``name``, record a new
    version of that name unless its latest version already is this code."""
    data = source.encode()
    if len(data) > MAX_BUNDLE_BYTES:
        raise FatalError(
            f"UDF source is {len(data)} bytes, past the bundle cap of {MAX_BUNDLE_BYTES}"
        )
    sha = source_sha256(source)
    key = bundle_key(sha)
    if not runtime.store.exists(key):
        runtime.store.put_bytes(key, data, OCTET_STREAM)
    org = runtime.settings.org_id
    with runtime.state() as conn, conn.transaction():
        conn.execute(
            q("udf", "insert_bundle"),
            {"org_id": org, "sha256": sha, "object_key": key, "size_bytes": len(data)},
        )
        if name is not None:
            conn.execute(q("udf", "lock_bundle_name"), {"org_id": org, "name": name})
            row = conn.execute(q("udf", "latest_version"), {"org_id": org, "name": name}).fetchone()
            if row is None or row[1] != sha:
                conn.execute(
                    q("udf", "insert_version"),
                    {
                        "org_id": org,
                        "name": name,
                        "version": (row[0] if row else 0) + 1,
                        "sha256": sha,
                    },
                )
    return sha


def get_bundle(runtime: Runtime, sha256: str) -> str:
    """The source of bundle ``sha256``. Raises ``BundleNotFound`` or ``BundleCorrupt``."""
    org = runtime.settings.org_id
    with runtime.state() as conn:
        row = conn.execute(q("udf", "bundle_key"), {"org_id": org, "sha256": sha256}).fetchone()
    if row is None:
        raise BundleNotFound(f"no UDF bundle {sha256}", sha256=sha256)
    try:
        data = runtime.store.get_bytes(row[0], max_bytes=MAX_BUNDLE_BYTES)
    except ObjectNotFound as exc:
        raise BundleNotFound(f"UDF bundle {sha256} is recorded but its object is gone") from exc
    source = data.decode()
    if source_sha256(source) != sha256:
        raise BundleCorrupt(f"UDF bundle {sha256} does not match its hash", sha256=sha256)
    return source


def bundle_versions(runtime: Runtime, name: str) -> list[BundleVersion]:
    """Every version of the named UDF, oldest first."""
    with runtime.state() as conn:
        rows = conn.execute(
            q("udf", "versions"), {"org_id": runtime.settings.org_id, "name": name}
        ).fetchall()
    return [BundleVersion(int(r[0]), str(r[1]), r[2]) for r in rows]
