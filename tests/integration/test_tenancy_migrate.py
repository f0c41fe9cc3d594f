"""The tenancy migrations move a deployment's existing single-org rows to their orgs: children
take their parent's org, the rest the default org, and an org id already in use (a deployment
that had set TRACE_ORG_ID) becomes an org of its own. Applied on top of the migrations before
tenancy, with real rows in place."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from yoyo import get_backend, read_migrations

from tests.conftest import _recreate, drop_databases
from trace_core.db.connection import Databases, connect, with_database
from trace_core.db.migrate import MIGRATIONS_ROOT, _yoyo_url, migrate

OTHER = uuid.UUID("0000000a-0000-0000-0000-00000000000b")
DEFAULT = uuid.UUID("00000000-0000-0000-0000-000000000001")
BEFORE = {"state": "0030", "data": "0010"}


def _migrate_before_tenancy(url: str, which: str) -> None:
    backend = get_backend(_yoyo_url(url))
    try:
        subset = read_migrations(str(MIGRATIONS_ROOT / which)).filter(
            lambda m: m.id < BEFORE[which]
        )
        with backend.lock():
            backend.apply_migrations(backend.to_apply(subset))
    finally:
        backend.connection.close()


@pytest.fixture
def old_dbs(pg_server_url: str) -> Iterator[Databases]:
    suffix = uuid.uuid4().hex[:8]
    names = (f"t_old_{suffix}_state", f"t_old_{suffix}_data")
    for name in names:
        _recreate(pg_server_url, name)
    dbs = Databases(with_database(pg_server_url, names[0]), with_database(pg_server_url, names[1]))
    _migrate_before_tenancy(dbs.state_url, "state")
    _migrate_before_tenancy(dbs.data_url, "data")
    yield dbs
    drop_databases(pg_server_url, dbs)


def test_existing_rows_move_to_their_orgs(old_dbs: Databases) -> None:
    job, task, dataset, version = (uuid.uuid4() for _ in range(4))
    with connect(old_dbs.state_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO state.chain_sync_jobs (job_id, org_id, name, chain_id, mode,"
            " from_block, to_block, yaml_hash, spec) VALUES (%s, %s, 'old', 1, 'fixed_target',"
            " 0, 10, 'h', '{}')",
            (job, OTHER),
        )
        conn.execute(
            "INSERT INTO state.tasks (task_id, operator, job_id) VALUES (%s, 'cryo_ingest', %s)",
            (task, job),
        )
        conn.execute("INSERT INTO state.tasks (task_id, operator) VALUES (%s, 'x')", (dataset,))
        conn.execute(
            "INSERT INTO state.datasets (dataset_uuid, org_id, chain_id, dataset_key)"
            " VALUES (%s, %s, 1, 'blocks')",
            (dataset, OTHER),
        )
        conn.execute(
            "INSERT INTO state.dataset_versions (dataset_version, dataset_uuid, chain_id,"
            " range_start, range_end, config_hash, schema_hash, storage_prefix, manifest_key,"
            " row_count, bytes, file_count) VALUES (%s, %s, 1, 0, 10, 'c', 's', 'p/', 'p/m',"
            " 0, 0, 0)",
            (version, dataset),
        )
        conn.execute(
            "INSERT INTO state.hot_follower_cursors (chain_id, first_block, block_number)"
            " VALUES (1, 5, 5)"
        )
    with connect(old_dbs.data_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO data.hot_blocks (chain_id, block_number, block_hash, parent_hash)"
            " VALUES (1, 5, '\\x01', '\\x00')"
        )
    applied = migrate(old_dbs)
    assert applied["state"][0].startswith("0030") and applied["data"][0].startswith("0010")
    with connect(old_dbs.state_url) as conn:
        orgs = dict(conn.execute("SELECT org_id, name FROM state.orgs").fetchall())
        assert orgs == {DEFAULT: "default", OTHER: "org-0000000a"}
        tasks = dict(conn.execute("SELECT task_id, org_id FROM state.tasks").fetchall())
        assert tasks == {task: OTHER, dataset: DEFAULT}
        assert conn.execute(
            "SELECT org_id FROM state.dataset_versions WHERE dataset_version = %s", (version,)
        ).fetchone() == (OTHER,)
        # the follower's cursor, like the hot rows, is the default org's (keyed by org: 0075)
        assert conn.execute(
            "SELECT org_id, chain_id, block_number FROM state.hot_follower_cursors"
        ).fetchall() == [(DEFAULT, 1, 5)]
    with connect(old_dbs.data_url) as conn:
        assert conn.execute("SELECT org_id FROM data.hot_blocks").fetchone() == (DEFAULT,)
