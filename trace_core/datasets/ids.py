"""Deterministic dataset identifiers and object-key layout (reference digest section 6.4).

UUIDv5 with the reference's namespaces, so ids match the Rust implementation exactly. The
same ``(dataset, config, chain, range)`` always yields the same version id and prefix, which
is what makes a retried range collapse onto one committed version.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from trace_core.errors import InvalidPayload

CHAIN_SYNC_DATASET_NS = uuid.UUID("1f55c495-7e91-4433-8b4a-0c088c5a5c7f")
DATASET_VERSION_NS = uuid.UUID("6e484f2c-567a-44f3-8a5e-c0650b2a169f")

CONFIG_HASH_VERSION = "v1"
MANIFEST_NAME = "_manifest.json"

_SLUG = re.compile(r"^[a-z0-9_]{1,64}$")
_CONFIG_HASH = re.compile(r"^cryo_ingest\.([a-z0-9_]{1,64}):v[0-9]+(?::[0-9a-f]{16})?$")


def _check_chain(chain_id: int) -> None:
    if isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id <= 0:
        raise InvalidPayload(
            f"chain_id must be a positive integer, got {chain_id!r}", field="chain_id"
        )


def _check_slug(value: str, field: str) -> None:
    if not isinstance(value, str) or not _SLUG.match(value):
        raise InvalidPayload(
            f"{field} must be 1-64 characters of lowercase letters, digits and '_', got {value!r}",
            field=field,
        )


def _check_range(range_start: int, range_end: int) -> None:
    for name, value in (("range_start", range_start), ("range_end", range_end)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidPayload(
                f"{name} must be a non-negative integer, got {value!r}", field=name
            )
    if range_end <= range_start:
        raise InvalidPayload(
            f"range_end ({range_end}) must be greater than range_start ({range_start})",
            field="range_end",
        )


def dataset_uuid(org_id: str | uuid.UUID, chain_id: int, dataset_key: str) -> uuid.UUID:
    """``dataset_uuid`` of a chain_sync stream: UUIDv5 over ``chain_sync:{org}:{chain}:{key}``.

    Raises ``InvalidPayload`` for chain_id <= 0 or a dataset_key that is not a slug.
    """
    _check_chain(chain_id)
    _check_slug(dataset_key, "dataset_key")
    org = uuid.UUID(str(org_id))
    return uuid.uuid5(CHAIN_SYNC_DATASET_NS, f"chain_sync:{org}:{chain_id}:{dataset_key}")


def dataset_version(
    dataset_uuid: uuid.UUID,
    config_hash: str,
    chain_id: int,
    range_start: int,
    range_end: int,
    *,
    fake: bool = False,
) -> uuid.UUID:
    """Version id of one range: UUIDv5 over
    ``cryo_ingest:{dataset_uuid}:{config_hash}:{chain_id}:{range_start}:{range_end}``
    (``cryo_ingest_fake:...`` for fake data, so a real sync of the range never collides with
    a fake version and supersedes it)."""
    _check_chain(chain_id)
    _check_range(range_start, range_end)
    if not config_hash:
        raise InvalidPayload("config_hash must be non-empty", field="config_hash")
    kind = "cryo_ingest_fake" if fake else "cryo_ingest"
    name = f"{kind}:{dataset_uuid}:{config_hash}:{chain_id}:{range_start}:{range_end}"
    return uuid.uuid5(DATASET_VERSION_NS, name)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(cryo_dataset_name: str, options: Mapping[str, Any] | None = None) -> str:
    """``cryo_ingest.{name}:v1``, plus ``:{16 hex of sha256(canonical options)}`` when extra
    cryo options are set (None-valued options count as unset)."""
    _check_slug(cryo_dataset_name, "cryo_dataset_name")
    base = f"cryo_ingest.{cryo_dataset_name}:{CONFIG_HASH_VERSION}"
    effective = {k: v for k, v in (options or {}).items() if v is not None}
    if not effective:
        return base
    digest = hashlib.sha256(canonical_json(effective).encode()).hexdigest()[:16]
    return f"{base}:{digest}"


def dataset_name_from_config_hash(value: str) -> str | None:
    """The cryo dataset named by a ``cryo_ingest.<name>:v<N>[:<hex>]`` config hash, else None."""
    m = _CONFIG_HASH.match(value or "")
    return m.group(1) if m else None


def version_prefix(
    chain_id: int,
    dataset_uuid: uuid.UUID,
    range_start: int,
    range_end: int,
    dataset_version: uuid.UUID,
) -> str:
    """``cryo/{chain_id}/{dataset_uuid}/{range_start}_{range_end}/{dataset_version}/``."""
    _check_chain(chain_id)
    _check_range(range_start, range_end)
    return f"cryo/{chain_id}/{dataset_uuid}/{range_start}_{range_end}/{dataset_version}/"


def manifest_key(prefix: str) -> str:
    """The manifest key of a version prefix (``{prefix}_manifest.json``)."""
    return f"{prefix}{MANIFEST_NAME}"


def staging_prefix(task_id: uuid.UUID, attempt: int) -> str:
    """Store prefix of one attempt's uploads: ``staging/{task_id}/{attempt}/``. Never queried."""
    return f"staging/{task_id}/{attempt}/"
