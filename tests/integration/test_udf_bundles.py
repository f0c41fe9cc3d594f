"""UDF code bundles on real Postgres and the local object store: content-addressed, idempotent,
versioned per name, verified on read."""

from __future__ import annotations

import pytest

from trace_core.runtime import Runtime
from trace_core.settings import Settings
from trace_core.udf import UdfInvocationPayload, source_sha256
from trace_core.udf.bundles import (
    BundleCorrupt,
    BundleNotFound,
    bundle_key,
    bundle_versions,
    get_bundle,
    put_bundle,
)

V1 = "def main(x):\n    return x\n"
V2 = "def main(x):\n    return [x]\n"


def test_bundles_are_content_addressed_and_versioned(settings: Settings) -> None:
    rt = Runtime(settings)
    sha1 = put_bundle(rt, V1, name="jobs/volume.py")
    assert sha1 == source_sha256(V1)
    assert rt.store.get_bytes(bundle_key(sha1)) == V1.encode()
    assert put_bundle(rt, V1, name="jobs/volume.py") == sha1  # same code: no new version
    sha2 = put_bundle(rt, V2, name="jobs/volume.py")
    put_bundle(rt, V1, name="jobs/volume.py")  # back to v1: a third version
    versions = bundle_versions(rt, "jobs/volume.py")
    assert [(v.version, v.sha256) for v in versions] == [(1, sha1), (2, sha2), (3, sha1)]
    assert get_bundle(rt, sha2) == V2
    # a task pins the code it ran: the payload carries the bundle's hash, checked against it
    payload = UdfInvocationPayload(source=get_bundle(rt, sha1), bundle_sha256=sha1)
    assert payload.bundle_sha256 == sha1
    with rt.state() as conn:
        count = conn.execute("SELECT count(*) FROM state.udf_bundles").fetchone()
    assert count == (2,)


def test_unknown_and_tampered_bundles_are_refused(settings: Settings) -> None:
    rt = Runtime(settings)
    with pytest.raises(BundleNotFound):
        get_bundle(rt, "a" * 64)
    sha = put_bundle(rt, V1)
    rt.store.put_bytes(bundle_key(sha), b"def main(x):\n    return 'evil'\n")
    with pytest.raises(BundleCorrupt):
        get_bundle(rt, sha)
