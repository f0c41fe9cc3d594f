"""Retention of superseded dataset versions on real Postgres and a local object store.

Covers: only superseded versions go, never one a queued/running task pins, never inside the
grace period; ``--dry-run`` changes nothing; the registry keeps a tombstone that readers skip;
a pass that stopped between tombstone and purge is finished by the next; a collected version
committed again serves again.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from tests.integration.test_commit import ORG, _new_lease, _stage
from trace_core.cli.main import cli
from trace_core.datasets import registry
from trace_core.datasets.commit import CommittedVersion, commit_dataset_version
from trace_core.datasets.retention import gc_versions
from trace_core.db.connection import Databases
from trace_core.runtime import Runtime
from trace_core.storage import LocalStore
from trace_core.tasks import create_task


def _commit(
    conn: psycopg.Connection[Any], store: LocalStore, tmp: Path, start: int, end: int, salt: str
) -> CommittedVersion:
    lease = _new_lease(conn)
    staged = _stage(store, lease, tmp, start=start, end=end, salt=salt)
    if salt:  # another config: a new version of the same range (as a repair makes)
        staged = dataclasses.replace(staged, config_hash=f"{staged.config_hash}:{salt}")
    return commit_dataset_version(conn, store, lease, staged)


def _tomb(conn: psycopg.Connection[Any], version: uuid.UUID) -> tuple[bool, bool]:
    row = conn.execute(
        "SELECT collected_at IS NOT NULL, purged_at IS NOT NULL FROM state.dataset_versions "
        "WHERE dataset_version = %s",
        (version,),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_superseded_versions_go_after_grace_unless_pinned(
    trace_env: Runtime, dbs: Databases, tmp_path: Path
) -> None:
    store = LocalStore(trace_env.settings.resolved_home() / "objects")
    with psycopg.connect(dbs.state_url, autocommit=True) as conn:
        old = _commit(conn, store, tmp_path, 0, 200, "").record
        new = _commit(conn, store, tmp_path, 0, 200, "repair-1").record  # supersedes `old`
        other = _commit(conn, store, tmp_path, 200, 400, "").record
        old_keys = [i.key for i in store.list(old.storage_prefix)]
        assert len(old_keys) == 3  # two Parquet files and the manifest

        # a queued task pins `old` through its grants: kept whatever the grace
        pin = uuid.uuid4()
        with conn.transaction():
            grants = [{"dataset_version": str(old.dataset_version)}]
            create_task(conn, task_id=pin, operator="alert_evaluate", payload={"grants": grants})
        report = gc_versions(conn, store, ORG, grace_seconds=0)
        assert [s.record.dataset_version for s in report.kept_pinned] == [old.dataset_version]
        assert report.collected == [] and _tomb(conn, old.dataset_version) == (False, False)

        conn.execute("UPDATE state.tasks SET status = 'succeeded' WHERE task_id = %s", (pin,))
        in_grace = gc_versions(conn, store, ORG, grace_seconds=3600)
        assert [s.record.dataset_version for s in in_grace.kept_in_grace] == [old.dataset_version]

        # --dry-run shows what would go and changes nothing (through the CLI)
        result = CliRunner().invoke(cli, ["gc", "--versions", "--dry-run", "--grace-seconds", "0"])
        assert result.exit_code == 0, result.output
        assert "would collect 1 superseded version(s)" in result.output
        assert str(old.dataset_version) in result.output
        assert str(new.dataset_version) not in result.output
        assert _tomb(conn, old.dataset_version) == (False, False)
        assert [i.key for i in store.list(old.storage_prefix)] == old_keys

        report = gc_versions(conn, store, ORG, grace_seconds=0)
        assert [s.record.dataset_version for s in report.collected] == [old.dataset_version]
        assert (report.purged, report.objects_deleted) == (1, 3)
        assert _tomb(conn, old.dataset_version) == (True, True)  # the row stays: a tombstone
        assert store.list(old.storage_prefix) == []
        assert store.list(new.storage_prefix) and store.list(other.storage_prefix)
        served = registry.versions_of_dataset(conn, old.dataset_uuid)
        assert {r.dataset_version for r in served} == {new.dataset_version, other.dataset_version}
        assert registry.get_version(conn, old.dataset_version).collected  # type: ignore[union-attr]
        again = gc_versions(conn, store, ORG, grace_seconds=0)
        assert again.collected == [] and again.purged == 0

        # committed again (same deterministic id): published anew and served as the newest
        revived = _commit(conn, store, tmp_path, 0, 200, "").record
        assert revived.dataset_version == old.dataset_version and not revived.collected
        assert _tomb(conn, old.dataset_version) == (False, False)
        assert len(store.list(old.storage_prefix)) == 3
        visible = registry.latest_versions(conn, old.dataset_uuid)
        assert [r.dataset_version for r in visible] == [old.dataset_version, other.dataset_version]


def test_a_pass_stopped_before_the_purge_is_finished_by_the_next(
    trace_env: Runtime, dbs: Databases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(trace_env.settings.resolved_home() / "objects")
    with psycopg.connect(dbs.state_url, autocommit=True) as conn:
        old = _commit(conn, store, tmp_path, 0, 200, "").record
        _commit(conn, store, tmp_path, 0, 200, "repair-1")

        def fail(prefix: str) -> int:
            raise OSError("disk gone")

        monkeypatch.setattr(store, "delete_prefix", fail)
        with pytest.raises(OSError):
            gc_versions(conn, store, ORG, grace_seconds=0)
        assert _tomb(conn, old.dataset_version) == (True, False)
        assert len(store.list(old.storage_prefix)) == 3
        monkeypatch.undo()
        report = gc_versions(conn, store, ORG, grace_seconds=0)
        assert report.collected == [] and report.purged == 1
        assert _tomb(conn, old.dataset_version) == (True, True)
        assert store.list(old.storage_prefix) == []
