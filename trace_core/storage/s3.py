"""S3Store: objects in an S3 bucket (AWS, MinIO, or moto's server), under an optional prefix.

``endpoint_url`` selects MinIO/moto and forces path-style addressing. Credentials come from
boto3's usual chain (environment, profile, instance role) and never appear in messages.
A PUT is atomic on S3; ``put_file`` streams (multipart for large files).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from trace_core.errors import ObjectNotFound, ObjectTooLarge, StorageError
from trace_core.storage.base import OCTET_STREAM, ObjectInfo, validate_key, validate_prefix

log = logging.getLogger(__name__)

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_DELETE_BATCH = 1000
_TRANSFER = TransferConfig(
    multipart_threshold=64 * 1024 * 1024, multipart_chunksize=64 * 1024 * 1024
)


class S3Store:
    """Objects at ``s3://{bucket}/{base_prefix}{key}``; ``url`` is ``s3://bucket/prefix``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 5,
        client: Any = None,
    ) -> None:
        """``client`` shares an existing boto3 S3 client (creating one costs ~0.3 s)."""
        if not bucket:
            raise StorageError("S3 object store needs a bucket name")
        self.bucket = bucket
        self.base_prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if self.base_prefix:
            validate_prefix(self.base_prefix)
        self.endpoint_url = endpoint_url
        self.region = region
        self.url = f"s3://{bucket}/{self.base_prefix}".rstrip("/")
        self._config = Config(
            region_name=region,
            s3={"addressing_style": "path"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
        )
        self._client: Any = client

    def __repr__(self) -> str:
        return f"S3Store({self.url})"

    @property
    def client(self) -> Any:
        """The boto3 S3 client, created on first use."""
        if self._client is None:
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint_url, config=self._config
            )
        return self._client

    def with_credentials(self, key_id: str, secret: str, session_token: str) -> S3Store:
        """This store (bucket, prefix, endpoint, timeouts) signed with other credentials: the
        Credential Broker's per-attempt ones. Never logs them."""
        client = boto3.session.Session(
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            aws_session_token=session_token,
        ).client("s3", endpoint_url=self.endpoint_url, config=self._config)
        return S3Store(
            self.bucket,
            self.base_prefix,
            endpoint_url=self.endpoint_url,
            region=self.region,
            client=client,
        )

    def _full(self, key: str) -> str:
        return self.base_prefix + validate_key(key)

    def _rel(self, full_key: str) -> str:
        return full_key[len(self.base_prefix) :]

    @contextlib.contextmanager
    def _errors(self, what: str, key: str) -> Iterator[None]:
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND:
                raise ObjectNotFound(f"no object {key!r} in {self.url}", key=key) from exc
            raise StorageError(
                f"{what} {key!r} in {self.url} failed: {code or exc}", key=key
            ) from exc
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise StorageError(
                f"{what} {key!r} in {self.url} failed: {type(exc).__name__}", key=key
            ) from exc

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (Lite compose / tests; AWS buckets pre-exist)."""
        with self._errors("create bucket", self.bucket):
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return
            except botocore.exceptions.ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code", "")) not in _NOT_FOUND:
                    raise
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if self.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            with contextlib.suppress(self.client.exceptions.BucketAlreadyOwnedByYou):
                self.client.create_bucket(**kwargs)

    # --- writes --------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, content_type: str = OCTET_STREAM) -> None:
        full = self._full(key)
        with self._errors("put", key):
            self.client.put_object(
                Bucket=self.bucket, Key=full, Body=data, ContentType=content_type
            )

    def put_file(self, key: str, path: Path, content_type: str = OCTET_STREAM) -> None:
        full = self._full(key)
        with self._errors("put", key):
            self.client.upload_file(
                str(path),
                self.bucket,
                full,
                ExtraArgs={"ContentType": content_type},
                Config=_TRANSFER,
            )

    def copy(self, src: str, dst: str) -> None:
        src_full, dst_full = self._full(src), self._full(dst)
        with self._errors("copy", src):
            self.client.copy(
                {"Bucket": self.bucket, "Key": src_full}, self.bucket, dst_full, Config=_TRANSFER
            )

    def move(self, src: str, dst: str) -> None:
        self.copy(src, dst)
        self.delete(src)

    def delete(self, key: str) -> None:
        full = self._full(key)
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=full)

    def delete_prefix(self, prefix: str) -> int:
        keys = [info.key for info in self.list(prefix)]
        for i in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": self._full(k)} for k in keys[i : i + _DELETE_BATCH]]
            with self._errors("delete", prefix):
                reply = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            errors = reply.get("Errors") or []
            if errors:
                raise StorageError(
                    f"delete under {prefix!r} in {self.url}: {len(errors)} objects not deleted",
                    key=prefix,
                )
        return len(keys)

    # --- reads ---------------------------------------------------------------------------

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        full = self._full(key)
        with self._errors("get", key):
            reply = self.client.get_object(Bucket=self.bucket, Key=full)
            body = reply["Body"]
            try:
                if max_bytes is not None and int(reply.get("ContentLength", 0)) > max_bytes:
                    raise ObjectTooLarge(
                        f"object {key!r} is larger than {max_bytes} bytes",
                        key=key,
                        max_bytes=max_bytes,
                    )
                data: bytes = body.read() if max_bytes is None else body.read(max_bytes + 1)
            finally:
                body.close()
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectTooLarge(
                f"object {key!r} is larger than {max_bytes} bytes", key=key, max_bytes=max_bytes
            )
        return data

    def _head(self, key: str) -> dict[str, Any] | None:
        full = self._full(key)
        with self._errors("head", key):
            try:
                reply: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=full)
                return reply
            except botocore.exceptions.ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code", "")) in _NOT_FOUND:
                    return None
                raise

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise ObjectNotFound(f"no object {key!r} in {self.url}", key=key)
        return int(head["ContentLength"])

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        validate_prefix(prefix)
        out: list[ObjectInfo] = []
        with self._errors("list", prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.base_prefix + prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    out.append(
                        ObjectInfo(self._rel(obj["Key"]), int(obj["Size"]), obj["LastModified"])
                    )
        out.sort(key=lambda info: info.key)
        return out

    def duckdb_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def presign_get(self, key: str, expires_seconds: int = 3600) -> str | None:
        full = self._full(key)
        with self._errors("presign", key):
            url: str = self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": full},
                ExpiresIn=int(expires_seconds),
            )
        return url
