"""The Credential Broker at claim time: a claimed attempt's scoped S3 credentials
(``storage.broker``), when ``TRACE_WORKER_S3_ROLE_ARN`` is set and the object store is S3.

Read prefixes are the version directories of the attempt's pinned inputs (the payload's
``grants``, each ``{dataset_uuid, dataset_version, manifest_key}``); the write prefix is the
attempt's own ``staging/{task_id}/{attempt}/``. The operator stages through
``OperatorContext.staging_store``, built from these credentials; the commit keeps the worker's.
"""

from __future__ import annotations

import posixpath
import threading
from typing import Any

from trace_core.datasets import ids
from trace_core.errors import InvalidPayload
from trace_core.runtime import Runtime
from trace_core.settings import Settings
from trace_core.storage.broker import CredentialBroker, ScopedCredentials
from trace_core.storage.s3 import S3Store
from trace_core.tasks.lifecycle import Lease

_BROKERS: dict[tuple[Any, ...], CredentialBroker] = {}
_LOCK = threading.Lock()


def _broker(settings: Settings, bucket: str, base_prefix: str) -> CredentialBroker:
    """One broker (one STS client, ~0.3 s to build) per configuration, shared by threads."""
    key = (
        settings.worker_s3_role_arn,
        settings.worker_s3_credentials_ttl_seconds,
        settings.s3_endpoint_url,
        settings.aws_region,
        bucket,
        base_prefix,
    )
    with _LOCK:
        if key not in _BROKERS:
            _BROKERS[key] = CredentialBroker(settings, bucket, base_prefix)
        return _BROKERS[key]


def input_prefixes(payload: dict[str, Any]) -> list[str]:
    """The version directory of each pinned input (``InvalidPayload`` for a malformed pin)."""
    out: list[str] = []
    for pin in payload.get("grants") or []:
        key = pin.get("manifest_key") if isinstance(pin, dict) else None
        if not isinstance(key, str) or "/" not in key:
            raise InvalidPayload("grants: a pin without a manifest_key", field="grants")
        out.append(posixpath.dirname(key) + "/")
    return out


def attempt_credentials(rt: Runtime, lease: Lease) -> ScopedCredentials | None:
    """The attempt's scoped credentials, or None when the broker is off (no role configured,
    or a local object store)."""
    store = rt.store
    if not rt.settings.worker_s3_role_arn or not isinstance(store, S3Store):
        return None
    broker = _broker(rt.settings, store.bucket, store.base_prefix)
    return broker.issue(
        lease.task_id,
        lease.attempt,
        input_prefixes(lease.payload),
        ids.staging_prefix(lease.task_id, lease.attempt),
    )
