"""The Credential Broker: per claimed attempt, short-lived S3 credentials scoped to what the
attempt may touch (``TRACE_WORKER_S3_ROLE_ARN``, the S3 object store only).

``attempt_policy`` is the session policy (pure): ``s3:GetObject`` under each input's version
prefix, ``s3:PutObject`` and ``s3:AbortMultipartUpload`` under the attempt's own staging
prefix, nothing else (no listing, no delete, no other prefix: another org's datasets,
committed versions and other attempts' staging stay out of reach). ``CredentialBroker.issue``
calls STS ``AssumeRole`` with it for ``TRACE_WORKER_S3_CREDENTIALS_TTL_SECONDS``; the
effective permissions are the intersection of the role's and the policy's. The trusted commit
(copy to the version prefix, manifest, pointer) keeps the worker's own credentials.

Session policies are capped at 2,048 packed characters by AWS: an attempt pinned to more
versions than fit reads its inputs' dataset prefixes instead (the same datasets, never another
org's); one whose datasets do not fit either fails (``StorageError``, retried).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trace_core.errors import StorageError
from trace_core.settings import Settings

log = logging.getLogger(__name__)

MAX_POLICY_CHARS = 2048
READ_ACTIONS = ("s3:GetObject",)
WRITE_ACTIONS = ("s3:PutObject", "s3:AbortMultipartUpload")


def _arn(bucket: str, base_prefix: str, prefix: str) -> str:
    if not prefix.endswith("/") or prefix.startswith("/") or "*" in prefix:
        raise ValueError(f"a scoped prefix ends with '/' and has no wildcard: {prefix!r}")
    return f"arn:aws:s3:::{bucket}/{base_prefix}{prefix}*"


def _dataset_prefix(prefix: str) -> str:
    """``cryo/{chain}/{dataset}/{range}/{version}/`` -> ``cryo/{chain}/{dataset}/``."""
    parts = prefix.split("/")
    return "/".join(parts[:3]) + "/" if len(parts) > 4 else prefix


def attempt_policy(
    bucket: str, base_prefix: str, read_prefixes: Sequence[str], write_prefix: str
) -> dict[str, Any]:
    """The session policy of one attempt (prefixes relative to the store's ``base_prefix``).

    When the version prefixes do not fit ``MAX_POLICY_CHARS``, reads widen to the inputs'
    dataset prefixes (still only the datasets the attempt is pinned to, all of its own org);
    raises ``StorageError`` when even those do not fit."""
    for widen in (False, True):
        prefixes = [_dataset_prefix(p) if widen else p for p in read_prefixes]
        policy = _policy(bucket, base_prefix, prefixes, write_prefix)
        size = len(json.dumps(policy, separators=(",", ":")))
        if size <= MAX_POLICY_CHARS:
            if widen:
                log.info(
                    "attempt policy widened to dataset prefixes", extra={"inputs": len(prefixes)}
                )
            return policy
    raise StorageError(
        f"the attempt's session policy is {size} characters, over {MAX_POLICY_CHARS} "
        f"({len(set(prefixes))} input datasets)"
    )


def _policy(
    bucket: str, base_prefix: str, read_prefixes: Sequence[str], write_prefix: str
) -> dict[str, Any]:
    statements: list[dict[str, Any]] = []
    reads = sorted({_arn(bucket, base_prefix, p) for p in read_prefixes})
    if reads:
        statements.append(
            {
                "Sid": "ReadInputs",
                "Effect": "Allow",
                "Action": list(READ_ACTIONS),
                "Resource": reads,
            }
        )
    statements.append(
        {
            "Sid": "WriteStaging",
            "Effect": "Allow",
            "Action": list(WRITE_ACTIONS),
            "Resource": [_arn(bucket, base_prefix, write_prefix)],
        }
    )
    return {"Version": "2012-10-17", "Statement": statements}


@dataclass(frozen=True)
class ScopedCredentials:
    """An attempt's credentials. A secret: never logged (``repr`` shows the key id only)."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: dt.datetime
    policy: dict[str, Any]

    def __repr__(self) -> str:
        return f"ScopedCredentials({self.access_key_id}, expires {self.expiration.isoformat()})"


class CredentialBroker:
    """Issues ``ScopedCredentials`` through STS ``AssumeRole`` (one call per attempt)."""

    def __init__(self, settings: Settings, bucket: str, base_prefix: str = "") -> None:
        import boto3
        from botocore.config import Config

        if not settings.worker_s3_role_arn:
            raise ValueError("CredentialBroker needs worker_s3_role_arn")
        self.role_arn = settings.worker_s3_role_arn
        self.ttl = settings.worker_s3_credentials_ttl_seconds
        self.bucket = bucket
        self.base_prefix = base_prefix
        self._sts = boto3.client(
            "sts",
            endpoint_url=settings.s3_endpoint_url or None,
            region_name=settings.aws_region,
            config=Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 3}),
        )

    def issue(
        self,
        task_id: uuid.UUID,
        attempt: int,
        read_prefixes: Sequence[str],
        write_prefix: str,
    ) -> ScopedCredentials:
        """Credentials for one attempt. Raises ``StorageError`` (retryable) if STS fails; the
        message names STS's error code, never a credential."""
        from botocore.exceptions import BotoCoreError, ClientError

        policy = attempt_policy(self.bucket, self.base_prefix, read_prefixes, write_prefix)
        try:
            reply = self._sts.assume_role(
                RoleArn=self.role_arn,
                RoleSessionName=f"trace-{task_id.hex[:16]}-{attempt}",
                Policy=json.dumps(policy, separators=(",", ":")),
                DurationSeconds=self.ttl,
            )
        except (BotoCoreError, ClientError) as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            raise StorageError(f"could not get the attempt's scoped credentials ({code})") from None
        creds = reply["Credentials"]
        log.info(
            "scoped credentials issued",
            extra={"task_id": str(task_id), "attempt": attempt, "inputs": len(read_prefixes)},
        )
        return ScopedCredentials(
            creds["AccessKeyId"],
            creds["SecretAccessKey"],
            creds["SessionToken"],
            creds["Expiration"],
            policy,
        )


def scoped_store(store: Any, creds: ScopedCredentials) -> Any:
    """``store`` (an ``S3Store``) as seen through ``creds``."""
    from trace_core.storage.s3 import S3Store

    if not isinstance(store, S3Store):
        raise StorageError("scoped credentials apply to the S3 object store only")
    return store.with_credentials(creds.access_key_id, creds.secret_access_key, creds.session_token)
