"""The ObjectStore contract, run against LocalStore (a temp dir) and S3Store (moto's server)."""

from __future__ import annotations

import os
import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import duckdb
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trace_core.errors import ConfigError, InvalidObjectKey, ObjectNotFound, ObjectTooLarge
from trace_core.settings import Settings
from trace_core.storage import LocalStore, ObjectStore, make_object_store
from trace_core.storage.local import TMP_DIR
from trace_core.storage.s3 import S3Store

KINDS = ["local", "s3"]


@pytest.fixture(scope="module")
def s3_bucket(moto_server_url: str) -> S3Store:
    """One bucket (and one boto3 client) for the module; tests isolate by base prefix."""
    store = S3Store(f"os-{uuid.uuid4().hex[:12]}", endpoint_url=moto_server_url)
    store.ensure_bucket()
    return store


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "objects")
        return
    shared: S3Store = request.getfixturevalue("s3_bucket")
    yield S3Store(
        shared.bucket,
        f"trace/{uuid.uuid4().hex[:8]}",
        endpoint_url=shared.endpoint_url,
        client=shared.client,
    )


def test_bytes_round_trip_exists_and_size(store: ObjectStore) -> None:
    assert not store.exists("a/b.bin")
    store.put_bytes("a/b.bin", b"hello")
    assert store.exists("a/b.bin")
    assert store.get_bytes("a/b.bin") == b"hello"
    assert store.size("a/b.bin") == 5
    store.put_bytes("a/b.bin", b"replaced!")
    assert store.get_bytes("a/b.bin") == b"replaced!"


def test_put_file_streams_a_large_file(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    payload = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(payload)
    store.put_file("files/big.bin", src)
    assert store.size("files/big.bin") == len(payload)
    assert store.get_bytes("files/big.bin") == payload


def test_get_bytes_caps_and_missing_objects(store: ObjectStore) -> None:
    store.put_bytes("m.json", b"x" * 100)
    assert store.get_bytes("m.json", max_bytes=100) == b"x" * 100
    with pytest.raises(ObjectTooLarge):
        store.get_bytes("m.json", max_bytes=99)
    with pytest.raises(ObjectNotFound):
        store.get_bytes("missing.json")
    with pytest.raises(ObjectNotFound):
        store.size("missing.json")


def test_list_matches_a_string_prefix_sorted(store: ObjectStore) -> None:
    for key in ["a/b/2", "a/b/1", "a/bc/3", "x/y"]:
        store.put_bytes(key, key.encode())
    assert [o.key for o in store.list("a/b/")] == ["a/b/1", "a/b/2"]
    assert [o.key for o in store.list("a/b")] == ["a/b/1", "a/b/2", "a/bc/3"]
    everything = store.list("")
    assert [o.key for o in everything] == ["a/b/1", "a/b/2", "a/bc/3", "x/y"]
    assert all(o.size == len(o.key) for o in everything)
    assert all(o.last_modified.tzinfo is not None for o in everything)
    assert store.list("nothing/") == []


def test_delete_and_delete_prefix(store: ObjectStore) -> None:
    for key in ["p/1", "p/2", "p/q/3", "pz/4"]:
        store.put_bytes(key, b"1")
    store.delete("p/1")
    store.delete("p/1")  # a missing object is fine
    assert not store.exists("p/1")
    assert store.delete_prefix("p/") == 2
    assert [o.key for o in store.list("")] == ["pz/4"]
    assert store.delete_prefix("p/") == 0


def test_copy_and_move(store: ObjectStore) -> None:
    store.put_bytes("src/a", b"payload")
    store.copy("src/a", "dst/copied")
    assert store.get_bytes("src/a") == store.get_bytes("dst/copied") == b"payload"
    store.move("src/a", "dst/moved")
    assert not store.exists("src/a")
    assert store.get_bytes("dst/moved") == b"payload"
    with pytest.raises(ObjectNotFound):
        store.move("src/a", "dst/again")
    with pytest.raises(ObjectNotFound):
        store.copy("src/a", "dst/again")
    assert store.list("src/") == []


@pytest.mark.parametrize("key", ["../x", "a/../b", "/abs", "a\\b", "a//b", "a/./b", "", "dir/"])
def test_unsafe_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidObjectKey):
        store.put_bytes(key, b"x")
    with pytest.raises(InvalidObjectKey):
        store.get_bytes(key)
    with pytest.raises(InvalidObjectKey):
        store.exists(key)


def test_list_refuses_unsafe_prefixes(store: ObjectStore) -> None:
    with pytest.raises(InvalidObjectKey):
        store.list("../")
    with pytest.raises(InvalidObjectKey):
        store.delete_prefix("/etc/")


def _duckdb_for(store: ObjectStore) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    if isinstance(store, S3Store):
        import duckdb_extensions

        duckdb_extensions.import_extension("httpfs", con=con)
        con.execute("LOAD httpfs")
        endpoint = urlsplit(store.endpoint_url or "").netloc
        con.execute(
            "CREATE SECRET s3 (TYPE s3, KEY_ID 'testing', SECRET 'testing', REGION 'us-east-1',"
            f" ENDPOINT '{endpoint}', USE_SSL false, URL_STYLE 'path')"
        )
    return con


def test_duckdb_reads_the_duckdb_uri(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "t.parquet"
    pq.write_table(pa.table({"n": list(range(10))}), src)
    store.put_file("tables/t.parquet", src)
    uri = store.duckdb_uri("tables/t.parquet")
    if isinstance(store, LocalStore):
        assert Path(uri).is_absolute()
    else:
        assert isinstance(store, S3Store)
        assert uri == f"s3://{store.bucket}/{store.base_prefix}tables/t.parquet"
    con = _duckdb_for(store)
    try:
        assert con.execute("SELECT sum(n) FROM read_parquet(?)", [uri]).fetchone() == (45,)
    finally:
        con.close()


def test_presign_get(store: ObjectStore) -> None:
    store.put_bytes("signed/obj", b"secret-ish")
    url = store.presign_get("signed/obj", expires_seconds=60)
    if isinstance(store, LocalStore):
        assert url is None
        return
    assert url is not None
    assert httpx.get(url).content == b"secret-ish"


# --- per-store behaviour -----------------------------------------------------------------


def test_local_objects_are_read_only_and_temp_files_invisible(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    store.put_bytes("cryo/1/x.parquet", b"abc")
    mode = stat.S_IMODE(store.path("cryo/1/x.parquet").stat().st_mode)
    assert mode == 0o444
    store.put_bytes("cryo/1/x.parquet", b"replaced")  # immutable blobs are still replaceable
    assert store.get_bytes("cryo/1/x.parquet") == b"replaced"
    (store.root / TMP_DIR / "crashed-writer").write_bytes(b"partial")
    assert [o.key for o in store.list("")] == ["cryo/1/x.parquet"]
    with pytest.raises(InvalidObjectKey):
        store.put_bytes(f"{TMP_DIR}/x", b"x")
    assert store.remove_stale_tmp(0, now=float("inf")) == ["crashed-writer"]


def test_local_delete_prunes_empty_directories(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    store.put_bytes("staging/t/1/a.parquet", b"1")
    store.move("staging/t/1/a.parquet", "cryo/1/a.parquet")
    assert not (store.root / "staging").exists()
    store.delete("cryo/1/a.parquet")
    assert list(store.root.iterdir()) == [store.root / TMP_DIR]


def test_local_concurrent_writers_never_expose_partial_objects(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    blobs = [bytes([i]) * 200_000 for i in range(8)]
    seen: set[bytes] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.add(store.get_bytes("hot/key"))
            except ObjectNotFound:
                continue

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(5):
            for blob in blobs:
                store.put_bytes("hot/key", blob)
    finally:
        stop.set()
        thread.join()
    assert seen and seen <= set(blobs)


def test_s3_keys_live_under_the_base_prefix(moto_server_url: str) -> None:
    bucket = f"os-{uuid.uuid4().hex[:12]}"
    store = S3Store(bucket, "/base/", endpoint_url=moto_server_url)
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    store.put_bytes("k/v", b"1")
    client = boto3.client("s3", endpoint_url=moto_server_url, region_name="us-east-1")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["base/k/v"]
    assert store.url == f"s3://{bucket}/base"
    assert [o.key for o in store.list("")] == ["k/v"]


def test_factory_builds_stores_from_settings(tmp_path: Path, moto_server_url: str) -> None:
    local = make_object_store(Settings(home=tmp_path))
    assert isinstance(local, LocalStore)
    assert local.root == (tmp_path / "objects").resolve()
    s3 = make_object_store(
        Settings(
            home=tmp_path, object_store_url="s3://bkt/some/prefix", s3_endpoint_url=moto_server_url
        )
    )
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.base_prefix, s3.endpoint_url) == ("bkt", "some/prefix/", moto_server_url)
    for bad in ["ftp://x/y", "file://relative", "s3:///nobucket"]:
        with pytest.raises(ConfigError) as info:
            make_object_store(Settings(home=tmp_path, object_store_url=bad))
        assert "TRACE_OBJECT_STORE_URL" in str(info.value)
