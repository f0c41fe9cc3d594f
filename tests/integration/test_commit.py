"""The dataset commit protocol on real Postgres, a local directory store and moto's S3.

Covers: fenced commit, idempotent re-registration, conflicts, a stale attempt's staging never
promoted, a crash after the manifest but before registration, and staging GC.
"""

from __future__ import annotations

import json
import os
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trace_core.datasets import ids, registry
from trace_core.datasets.commit import (
    StagedOutput,
    commit_dataset_version,
    register_version,
    stage_parquet_files,
)
from trace_core.datasets.gc import gc_staging
from trace_core.datasets.manifest import load_manifest
from trace_core.db.connection import Databases
from trace_core.errors import ArtifactInvalid, DatasetConflict, StaleAttempt
from trace_core.settings import Settings
from trace_core.storage import LocalStore, ObjectStore
from trace_core.storage.s3 import S3Store
from trace_core.tasks import claim, create_task
from trace_core.tasks.lifecycle import Lease

CHAIN = 31337
ORG = "00000000-0000-0000-0000-000000000001"


@pytest.fixture
def state(dbs: Databases) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dbs.state_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, settings: Settings) -> ObjectStore:
    if request.param == "local":
        return LocalStore(settings.resolved_home() / "objects")
    s3 = S3Store(
        f"commit-{uuid.uuid4().hex[:12]}",
        "trace",
        endpoint_url=request.getfixturevalue("moto_server_url"),
    )
    s3.ensure_bucket()
    return s3


@pytest.fixture
def local_store(settings: Settings) -> LocalStore:
    return LocalStore(settings.resolved_home() / "objects")


def _new_lease(conn: psycopg.Connection[Any], task_id: uuid.UUID | None = None) -> Lease:
    task_id = task_id or uuid.uuid4()
    with conn.transaction():
        create_task(conn, task_id=task_id, operator="cryo_ingest", payload={}, max_attempts=5)
        return claim(conn, task_id, lease_seconds=30)


def _reclaim(conn: psycopg.Connection[Any], lease: Lease) -> Lease:
    """Expire ``lease`` (as a dead worker's would) and grant the next attempt."""
    with conn.transaction():
        conn.execute(
            "UPDATE state.tasks SET lease_expires_at = now() - interval '1 s' WHERE task_id = %s",
            (lease.task_id,),
        )
        return claim(conn, lease.task_id, lease_seconds=30)


def _parquet(dir_: Path, name: str, blocks: range, salt: str = "") -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    path = dir_ / name
    table = pa.table(
        {
            "block_number": pa.array(list(blocks), pa.uint32()),
            "payload": pa.array([f"{salt}{n}".encode() for n in blocks], pa.large_binary()),
        }
    )
    pq.write_table(table, path)
    return path


def _stage(
    store: ObjectStore, lease: Lease, tmp: Path, *, start: int = 0, end: int = 200, salt: str = ""
) -> StagedOutput:
    local = tmp / f"local-{lease.task_id}-{lease.attempt}"
    mid = (start + end) // 2
    files = [
        _parquet(local, "part_a.parquet", range(start, mid), salt),
        _parquet(local, "part_b.parquet", range(mid, end), salt),
    ]
    schema, staged = stage_parquet_files(store, lease.task_id, lease.attempt, files)
    return StagedOutput(
        task_id=lease.task_id,
        attempt=lease.attempt,
        org_id=ORG,
        dataset_uuid=ids.dataset_uuid(ORG, CHAIN, "blocks"),
        dataset_key="blocks",
        chain_id=CHAIN,
        range_start=start,
        range_end=end,
        config_hash=ids.config_hash("blocks"),
        schema=schema,
        files=staged,
    )


def _task(conn: psycopg.Connection[Any], task_id: uuid.UUID) -> tuple[str, int, Any]:
    row = conn.execute(
        "SELECT status, attempt, outputs FROM state.tasks WHERE task_id = %s", (task_id,)
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def _versions(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM state.dataset_versions").fetchone()
    assert row is not None
    return int(row[0])


def test_commit_publishes_registers_and_finishes(
    state: psycopg.Connection[Any], store: ObjectStore, tmp_path: Path
) -> None:
    lease = _new_lease(state)
    staged = _stage(store, lease, tmp_path)
    assert [o.key for o in store.list("cryo/")] == []  # staged objects are not published yet
    committed = commit_dataset_version(state, store, lease, staged)

    rec = committed.record
    assert committed.newly_registered
    assert rec.dataset_version == staged.dataset_version
    assert rec.storage_prefix == staged.prefix
    assert (rec.row_count, rec.file_count, rec.task_id, rec.attempt) == (200, 2, lease.task_id, 1)
    assert registry.get_version(state, rec.dataset_version) == rec
    assert registry.versions_for_stream(state, ORG, CHAIN, "blocks") == [rec]

    manifest = load_manifest(store, rec.manifest_key, prefix=rec.storage_prefix)
    assert manifest.parquet_keys == [
        rec.storage_prefix + "part_a.parquet",
        rec.storage_prefix + "part_b.parquet",
    ]
    assert [c.name for c in manifest.schema] == ["block_number", "payload"]
    assert manifest.schema_hash == rec.schema_hash
    for f in manifest.files:
        assert store.size(f.key) == f.size
    assert store.list("staging/") == []
    if isinstance(store, LocalStore):
        for key in manifest.parquet_keys:
            assert stat.S_IMODE(store.path(key).stat().st_mode) == 0o444

    status, attempt, outputs = _task(state, lease.task_id)
    assert (status, attempt) == ("succeeded", 1)
    assert outputs["dataset_version"] == str(rec.dataset_version)
    assert outputs["manifest_key"] == rec.manifest_key


def test_second_task_for_the_same_range_reuses_the_version(
    state: psycopg.Connection[Any], local_store: LocalStore, tmp_path: Path
) -> None:
    first = commit_dataset_version(
        state, local_store, (l1 := _new_lease(state)), _stage(local_store, l1, tmp_path)
    )
    manifest_path = local_store.path(first.record.manifest_key)
    before = (manifest_path.read_bytes(), manifest_path.stat().st_mtime_ns)

    l2 = _new_lease(state)
    second = commit_dataset_version(state, local_store, l2, _stage(local_store, l2, tmp_path))
    assert not second.newly_registered
    assert second.record == first.record
    assert (manifest_path.read_bytes(), manifest_path.stat().st_mtime_ns) == before
    assert _versions(state) == 1
    assert local_store.list("staging/") == []
    assert _task(state, l2.task_id)[2]["dataset_version"] == str(first.record.dataset_version)


def test_same_range_with_different_content_is_a_conflict(
    state: psycopg.Connection[Any], local_store: LocalStore, tmp_path: Path
) -> None:
    l1 = _new_lease(state)
    first = commit_dataset_version(state, local_store, l1, _stage(local_store, l1, tmp_path))
    published = {
        o.key: local_store.get_bytes(o.key) for o in local_store.list(first.record.storage_prefix)
    }
    l2 = _new_lease(state)
    other = _stage(local_store, l2, tmp_path, salt="different-bytes-")
    with pytest.raises(DatasetConflict, match="bytes"):
        commit_dataset_version(state, local_store, l2, other)
    assert _task(state, l2.task_id)[0] == "running"  # rolled back; the worker records the failure
    assert registry.latest_versions(state, first.record.dataset_uuid) == [first.record]
    after = {
        o.key: local_store.get_bytes(o.key) for o in local_store.list(first.record.storage_prefix)
    }
    assert after == published  # a registered version's objects are never rewritten


def test_stale_attempt_staging_is_never_promoted(
    state: psycopg.Connection[Any], store: ObjectStore, tmp_path: Path
) -> None:
    stale = _new_lease(state)
    stale_staged = _stage(store, stale, tmp_path)
    current = _reclaim(state, stale)
    assert current.attempt == 2

    with pytest.raises(StaleAttempt):
        commit_dataset_version(state, store, stale, stale_staged)
    assert store.list("cryo/") == []
    assert _versions(state) == 0
    assert [o.key for o in store.list(ids.staging_prefix(stale.task_id, 1))] == [
        f.staging_key for f in stale_staged.files
    ]
    with pytest.raises(StaleAttempt, match="another attempt|attempt 1"):
        commit_dataset_version(state, store, current, stale_staged)  # staging of attempt 1

    committed = commit_dataset_version(state, store, current, _stage(store, current, tmp_path))
    assert committed.record.attempt == 2
    assert _versions(state) == 1
    assert _task(state, current.task_id)[:2] == ("succeeded", 2)


def test_crash_after_manifest_before_registration_is_harmless(
    state: psycopg.Connection[Any], store: ObjectStore, tmp_path: Path
) -> None:
    lease = _new_lease(state)
    staged = _stage(store, lease, tmp_path)
    with state.transaction():  # the worker dies before its transaction commits
        commit_dataset_version(state, store, lease, staged)
        raise psycopg.Rollback()
    manifest_key = ids.manifest_key(staged.prefix)
    orphan = store.get_bytes(manifest_key)  # objects moved, manifest written ...
    assert _versions(state) == 0  # ... but nothing registered: readers resolve nothing
    assert registry.get_version(state, staged.dataset_version) is None
    assert registry.latest_versions(state, staged.dataset_uuid) == []
    assert _task(state, lease.task_id)[0] == "running"
    store.put_bytes(staged.prefix + "stray.parquet", b"left by someone")

    retry = _reclaim(state, lease)
    committed = commit_dataset_version(state, store, retry, _stage(store, retry, tmp_path))
    assert committed.newly_registered
    assert store.get_bytes(manifest_key) == orphan  # identical content rewritten
    assert sorted(o.key for o in store.list(staged.prefix)) == sorted(
        [*committed_keys(store, manifest_key), manifest_key]
    )


def committed_keys(store: ObjectStore, manifest_key: str) -> list[str]:
    return load_manifest(store, manifest_key).parquet_keys


def test_register_version_is_idempotent_and_fails_closed(
    state: psycopg.Connection[Any], local_store: LocalStore, tmp_path: Path
) -> None:
    lease = _new_lease(state)
    staged = _stage(local_store, lease, tmp_path)
    manifest = staged.manifest()
    args: dict[str, Any] = {
        "org_id": ORG,
        "storage_prefix": staged.prefix,
        "manifest_key": ids.manifest_key(staged.prefix),
    }
    with state.transaction():
        first = register_version(state, manifest, **args)
    with state.transaction():
        again = register_version(state, manifest, **args)
    assert first.newly_registered and not again.newly_registered
    assert again.record == first.record
    with pytest.raises(DatasetConflict, match="manifest_key"), state.transaction():
        register_version(state, manifest, **{**args, "manifest_key": "elsewhere/_manifest.json"})
    # the same range and config under another version id is refused, not a 500
    alien = type(manifest)(**{**manifest.__dict__, "dataset_version": uuid.uuid4()})
    with pytest.raises(DatasetConflict, match="another version"), state.transaction():
        register_version(state, alien, **args)
    # the dataset's identity cannot change either
    renamed = type(manifest)(**{**manifest.__dict__, "dataset_key": "other"})
    with pytest.raises(DatasetConflict, match="registered as"), state.transaction():
        register_version(state, renamed, **args)
    assert _versions(state) == 1


def test_staging_refuses_mixed_schemas(local_store: LocalStore, tmp_path: Path) -> None:
    a = _parquet(tmp_path / "mixed", "a.parquet", range(0, 5))
    b = tmp_path / "mixed" / "b.parquet"
    pq.write_table(pa.table({"block_number": pa.array([5], pa.uint64())}), b)
    with pytest.raises(ArtifactInvalid, match="different schema"):
        stage_parquet_files(local_store, uuid.uuid4(), 1, [a, b])
    not_parquet = tmp_path / "mixed" / "c.parquet"
    not_parquet.write_bytes(b"nope")
    with pytest.raises(ArtifactInvalid, match="not readable Parquet"):
        stage_parquet_files(local_store, uuid.uuid4(), 1, [not_parquet])


def _age(path: Path, seconds: float) -> None:
    stamp = time.time() - seconds
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            os.utime(os.path.join(dirpath, name), (stamp, stamp))
    os.utime(path, (stamp, stamp))


def test_gc_staging_removes_old_attempts_and_keeps_running_ones(
    state: psycopg.Connection[Any], settings: Settings, local_store: LocalStore, tmp_path: Path
) -> None:
    running = _new_lease(state)
    old_task = uuid.uuid4()
    staging = settings.resolved_staging_dir()
    for task, attempt in [(old_task, 1), (running.task_id, running.attempt)]:
        d = staging / str(task) / str(attempt)
        _parquet(d, "x.parquet", range(3))
        _age(d, 7200)
        local_store.put_bytes(f"{ids.staging_prefix(task, attempt)}x.parquet", b"1")
        _age(local_store.path(f"{ids.staging_prefix(task, attempt)}x.parquet"), 7200)
    fresh = uuid.uuid4()
    _parquet(staging / str(fresh) / "1", "x.parquet", range(3))
    local_store.put_bytes(f"{ids.staging_prefix(fresh, 1)}x.parquet", b"1")

    report = gc_staging(settings, local_store, 3600, conn=state)
    assert report.local_dirs == [str(staging / str(old_task) / "1")]
    assert report.store_prefixes == [ids.staging_prefix(old_task, 1)]
    assert report.objects_deleted == 1
    assert report.kept_running == [f"{running.task_id}/{running.attempt}"]
    assert not (staging / str(old_task)).exists()
    assert (staging / str(running.task_id) / "1").is_dir()
    assert sorted(o.key.split("/")[1] for o in local_store.list("staging/")) == sorted(
        [str(running.task_id), str(fresh)]
    )
    assert json.dumps(report.__dict__)  # reportable as JSON by the CLI
