"""Object storage: the ObjectStore protocol, a local-directory store and an S3/MinIO store.

``S3Store`` lives in ``trace_core.storage.s3`` (imported lazily: boto3 is slow to import).
"""

from trace_core.storage.base import ObjectInfo, ObjectStore, validate_key, validate_prefix
from trace_core.storage.factory import make_object_store, store_from_url
from trace_core.storage.local import LocalStore

__all__ = [
    "LocalStore",
    "ObjectInfo",
    "ObjectStore",
    "make_object_store",
    "store_from_url",
    "validate_key",
    "validate_prefix",
]
