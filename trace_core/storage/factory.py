"""Build the configured ObjectStore from settings (``file://`` or ``s3://bucket/prefix``)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from trace_core.errors import ConfigError
from trace_core.settings import Settings
from trace_core.storage.base import ObjectStore
from trace_core.storage.local import LocalStore


def store_from_url(
    url: str, *, s3_endpoint_url: str | None = None, region: str = "us-east-1"
) -> ObjectStore:
    """``file:///abs/dir`` -> LocalStore; ``s3://bucket[/prefix]`` -> S3Store.

    Raises ``ConfigError`` (field ``TRACE_OBJECT_STORE_URL``) for any other form.
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError("file:// URL must name a local path", field="TRACE_OBJECT_STORE_URL")
        path = Path(unquote(parts.path))
        if not path.is_absolute():
            raise ConfigError(
                "file:// URL must name an absolute path", field="TRACE_OBJECT_STORE_URL"
            )
        return LocalStore(path)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError("s3:// URL must name a bucket", field="TRACE_OBJECT_STORE_URL")
        from trace_core.storage.s3 import S3Store  # boto3 is imported only when S3 is used

        return S3Store(
            parts.netloc, parts.path.strip("/"), endpoint_url=s3_endpoint_url, region=region
        )
    raise ConfigError(
        f"unsupported object store scheme {parts.scheme!r} (use file:// or s3://)",
        field="TRACE_OBJECT_STORE_URL",
    )


def make_object_store(settings: Settings) -> ObjectStore:
    """The object store named by ``settings.resolved_object_store_url()``. No I/O happens here."""
    return store_from_url(
        settings.resolved_object_store_url(),
        s3_endpoint_url=settings.s3_endpoint_url,
        region=settings.aws_region,
    )
