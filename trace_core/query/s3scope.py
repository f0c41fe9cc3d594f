"""Short-lived, prefix-scoped S3 credentials for one query (S3, or MinIO's STS).

With ``TRACE_QUERY_S3_ROLE_ARN`` set, the Query Service does not hand DuckDB its own keys:
per query it calls STS ``AssumeRole`` with an inline session policy that allows only
``s3:GetObject`` under the version prefixes of the files the query was granted, for
``TRACE_QUERY_S3_CREDENTIALS_TTL_SECONDS``. The effective permissions are the intersection of
the role's and that policy, so even a sandbox escape could read nothing else. Credentials are
cached per set of prefixes until half their lifetime has passed.

Session policies are capped (2,048 packed characters on AWS); when the version prefixes do
not fit, the policy widens to the datasets' prefixes, then to the store's ``cryo/`` prefix,
and says so in the log.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from trace_core.errors import QueryError
from trace_core.query.sandbox import S3Access
from trace_core.settings import Settings

log = logging.getLogger(__name__)

MAX_POLICY_CHARS = 2048
SESSION_NAME = "trace-query"


def _prefix(uri: str, levels_up: int) -> tuple[str, str]:
    """``(bucket, key prefix)`` of an ``s3://bucket/key`` URI, ``levels_up`` directories above
    the object (1 = its own directory)."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    parts = key.split("/")[:-levels_up]
    return bucket, "/".join(parts) + "/" if parts else ""


def scope_policy(uris: Sequence[str]) -> dict[str, Any]:
    """A session policy allowing ``s3:GetObject`` on the directories of ``uris`` only.

    Version directories first (layout ``.../cryo/{chain}/{dataset}/{range}/{version}/``); if
    that does not fit ``MAX_POLICY_CHARS``, dataset directories (3 levels up), then the
    ``cryo/`` prefix (5 levels up).
    """
    if not uris or any(not u.startswith("s3://") for u in uris):
        raise ValueError("scope_policy needs s3:// URIs")
    for levels in (1, 3, 5):
        resources = sorted(
            {f"arn:aws:s3:::{b}/{p}*" for b, p in (_prefix(u, levels) for u in uris)}
        )
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": resources}],
        }
        if len(json.dumps(policy, separators=(",", ":"))) <= MAX_POLICY_CHARS:
            if levels > 1:
                log.info("session policy widened", extra={"levels_up": levels, "files": len(uris)})
            return policy
    raise QueryError("too many granted datasets for a scoped S3 session policy", code="too_large")


class ScopedCredentials:
    """``for_files(uris) -> S3Access`` with credentials scoped to those files' prefixes."""

    def __init__(self, settings: Settings, base: S3Access) -> None:
        import boto3
        from botocore.config import Config

        if not settings.query_s3_role_arn:
            raise ValueError("ScopedCredentials needs query_s3_role_arn")
        self.role_arn = settings.query_s3_role_arn
        self.ttl = settings.query_s3_credentials_ttl_seconds
        self.base = base
        self._sts = boto3.client(
            "sts",
            endpoint_url=settings.s3_endpoint_url or None,
            region_name=settings.aws_region,
            config=Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 2}),
        )
        self._cache: dict[str, tuple[float, S3Access]] = {}
        self._lock = threading.Lock()
        self.last_policy: dict[str, Any] | None = None

    def for_files(self, uris: Sequence[str]) -> S3Access:
        """Cached per policy; raises ``QueryError(code='storage_unavailable')`` if STS fails."""
        from botocore.exceptions import BotoCoreError, ClientError

        policy = scope_policy(uris)
        key = json.dumps(policy, sort_keys=True)
        now = time.monotonic()
        with self._lock:
            self.last_policy = policy
            hit = self._cache.get(key)
            if hit and hit[0] > now:
                return hit[1]
        try:
            reply = self._sts.assume_role(
                RoleArn=self.role_arn,
                RoleSessionName=SESSION_NAME,
                Policy=json.dumps(policy, separators=(",", ":")),
                DurationSeconds=self.ttl,
            )
        except (BotoCoreError, ClientError) as exc:
            # the error names the role and the service's code, never the credentials
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            raise QueryError(
                f"could not get scoped S3 credentials ({code})", code="storage_unavailable"
            ) from None
        creds = reply["Credentials"]
        access = replace(
            self.base,
            key_id=creds["AccessKeyId"],
            secret=creds["SecretAccessKey"],
            session_token=creds["SessionToken"],
        )
        with self._lock:
            self._cache[key] = (now + self.ttl / 2, access)
        return access
