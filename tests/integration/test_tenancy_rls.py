"""Row-level security, checked with real Postgres roles and policies (docs/tenancy.md).

- Every table in the ``state`` and ``data`` schemas is either a tenant table (RLS enabled and
  forced, with a policy) or on the explicit global allowlist below, where ``trace_tenant``
  holds no privilege (beyond reading the role catalogue): a table another branch adds later
  fails here until it decides.
- Per policy: org A, through ``tenant_scope`` as ``trace_tenant``, sees its own row of that
  table and never org B's, and cannot write a row of org B. The parametrized list must equal
  the policies in ``pg_policies``, so dropping any single policy fails its own case.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from tests.conftest import ClonePool
from trace_core.db.connection import Databases, connect
from trace_core.runtime import Runtime
from trace_core.settings import Settings
from trace_core.tenancy import create_org, tenant_scope

# Tables no tenant reads: system plumbing and catalogues (reason each).
GLOBAL_TABLES: dict[str, str] = {
    "state.queue_messages": "pgqueue wake-ups (messages are not authority)",
    "state.queue_dead": "pgqueue dead letters, an operator's view",
    "state.worker_runs": "Dagster run bookkeeping of the worker sensor",
    "state.service_leases": "leases of long-lived system services",
    "state.rpc_pool_slots": "extraction slots per RPC pool, shared capacity",
    "state.org_roles": "the role catalogue (read-only to tenants)",
}
TENANT_READABLE_GLOBALS = {"state.org_roles"}

A_ORG = uuid.UUID("00000000-0000-0000-0000-0000000000aa")
B_ORG = uuid.UUID("00000000-0000-0000-0000-0000000000bb")


@dataclass(frozen=True)
class Fixture:
    """How to put one row of org ``org`` into a table (a parent row first when needed),
    returning a predicate selecting exactly that row."""

    db: str  # "state" | "data"
    insert: Callable[[psycopg.Connection[Any], uuid.UUID, str], None]


def _sql(*statements: str) -> Callable[[psycopg.Connection[Any], uuid.UUID, str], None]:
    def run(conn: psycopg.Connection[Any], org: uuid.UUID, tag: str) -> None:
        for stmt in statements:
            conn.execute(stmt.format(org=org, tag=tag, uid=uuid.uuid5(org, tag)))

    return run


_TASK = (
    "INSERT INTO state.tasks (task_id, operator, org_id) "
    "VALUES ('{uid}', 'noop', '{org}') ON CONFLICT DO NOTHING"
)
_DATASET = (
    "INSERT INTO state.datasets (dataset_uuid, org_id, chain_id, dataset_key) "
    "VALUES ('{uid}', '{org}', 1, 'ds_{tag}') ON CONFLICT DO NOTHING"
)
_VERSION = (
    "INSERT INTO state.dataset_versions (dataset_version, dataset_uuid, chain_id, range_start,"
    " range_end, config_hash, schema_hash, storage_prefix, manifest_key, row_count, bytes,"
    " file_count) VALUES ('{uid}', '{uid}', 1, 0, 10, 'c', 's', 'p/', 'p/m.json', 0, 0, 0)"
    " ON CONFLICT DO NOTHING"
)
_JOB = (
    "INSERT INTO state.chain_sync_jobs (job_id, org_id, name, chain_id, mode, from_block,"
    " to_block, yaml_hash, spec) VALUES ('{uid}', '{org}', 'job_{tag}', 1, 'fixed_target',"
    " 0, 10, 'h', '{{}}') ON CONFLICT DO NOTHING"
)
_STREAM = (
    "INSERT INTO state.chain_sync_streams (job_id, dataset_key, cryo_dataset_name, rpc_pool,"
    " chunk_size, max_inflight, config_hash, dataset_uuid) VALUES ('{uid}', 'blocks', 'blocks',"
    " 'p', 10, 1, 'c', '{uid}') ON CONFLICT DO NOTHING"
)
_EVENT = (
    "INSERT INTO data.alert_events (dedupe_key, alert_name, severity, chain_id, block_number,"
    " event_time, payload, source_task_id, source_attempt, org_id) VALUES ('{tag}', 'a',"
    " 'info', 1, 1, now(), '{{}}', '{uid}', 1, '{org}') ON CONFLICT DO NOTHING"
)
_DELIVERY = (
    "INSERT INTO data.alert_deliveries (delivery_id, dedupe_key, alert_name, channel_key,"
    " channel_kind, max_attempts) VALUES ('{uid}', '{tag}', 'a', 'log', 'log', 1)"
    " ON CONFLICT DO NOTHING"
)
_USER = (
    "INSERT INTO state.users (user_id, email) VALUES ('{uid}', '{tag}@example.com')"
    " ON CONFLICT DO NOTHING"
)

# policy name -> how to make one row of an org (as the system: the superuser test connection)
POLICIES: dict[str, Fixture] = {
    "state.outbox_org": Fixture(
        "state",
        _sql(
            "INSERT INTO state.outbox (outbox_id, topic, payload, org_id)"
            " VALUES ('{uid}', 't', '{{}}', '{org}')"
        ),
    ),
    "state.tasks_org": Fixture("state", _sql(_TASK)),
    "state.task_attempts_org": Fixture(
        "state",
        _sql(_TASK, "INSERT INTO state.task_attempts (task_id, attempt) VALUES ('{uid}', 1)"),
    ),
    "state.task_revivals_org": Fixture(
        "state",
        _sql(
            _TASK,
            "INSERT INTO state.task_revivals (task_id, revive, attempt, source)"
            " VALUES ('{uid}', 1, 0, 'test')",
        ),
    ),
    "state.task_inputs_org": Fixture(
        "state",
        _sql(
            _TASK,
            _DATASET,
            _VERSION,
            "INSERT INTO state.task_inputs (task_id, dataset_version, dataset_uuid,"
            " storage_prefix) VALUES ('{uid}', '{uid}', '{uid}', 'p/')",
        ),
    ),
    "state.datasets_org": Fixture("state", _sql(_DATASET)),
    "state.dataset_versions_org": Fixture("state", _sql(_DATASET, _VERSION)),
    "state.chain_sync_jobs_org": Fixture("state", _sql(_JOB)),
    "state.chain_sync_streams_org": Fixture("state", _sql(_JOB, _STREAM)),
    "state.chain_sync_cursor_org": Fixture(
        "state",
        _sql(
            _JOB,
            _STREAM,
            "INSERT INTO state.chain_sync_cursor (job_id, dataset_key, next_block)"
            " VALUES ('{uid}', 'blocks', 0)",
        ),
    ),
    "state.chain_sync_scheduled_ranges_org": Fixture(
        "state",
        _sql(
            _JOB,
            _STREAM,
            "INSERT INTO state.chain_sync_scheduled_ranges (job_id, dataset_key, range_start,"
            " range_end, task_id) VALUES ('{uid}', 'blocks', 0, 10, '{uid}')",
        ),
    ),
    "state.epoch_materializations_org": Fixture(
        "state",
        _sql(
            _JOB,
            "INSERT INTO state.epoch_materializations (org_id, job_id, dataset_key, epoch_start,"
            " epoch_end, versions, claimed_by) VALUES ('{org}', '{uid}', 'blocks', 0, 10, 'v',"
            " 'test')",
        ),
    ),
    "state.chain_head_observations_org": Fixture(
        "state",
        _sql(
            "INSERT INTO state.chain_head_observations (org_id, chain_id, rpc_pool)"
            " VALUES ('{org}', 1, 'p_{tag}')"
        ),
    ),
    # both orgs' rows share chain, dataset key and range: the keys hold the org (issue 22)
    "state.partition_versions_org": Fixture(
        "state",
        _sql(
            _DATASET,
            "INSERT INTO state.partition_versions (dataset_uuid, dataset_version, partition_key,"
            " chain_id, dataset_key, range_start, range_end, row_count) VALUES ('{uid}', '{uid}',"
            " '0-10', 1, 'blocks', 0, 10, 0)",
        ),
    ),
    "state.hot_follower_cursors_org": Fixture(
        "state",
        _sql(
            "INSERT INTO state.hot_follower_cursors (org_id, chain_id, first_block, block_number)"
            " VALUES ('{org}', 1, 0, 7)"
        ),
    ),
    "state.alert_definitions_org": Fixture(
        "state",
        _sql(
            "INSERT INTO state.alert_definitions (alert_id, org_id, name, job_name, reads,"
            " on_commit, severity, spec, yaml_hash) VALUES ('{uid}', '{org}', 'al_{tag}', 'j',"
            " ARRAY['blocks'], true, 'info', '{{}}', 'h')"
        ),
    ),
    "state.rpc_pool_capabilities_org": Fixture(
        "state",
        _sql(
            "INSERT INTO state.rpc_pool_capabilities (org_id, chain_id, rpc_pool, capability)"
            " VALUES ('{org}', 1, 'p_{tag}', 'trace')"
        ),
    ),
    "state.udf_bundles_org": Fixture(
        "state",
        _sql(
            "INSERT INTO state.udf_bundles (org_id, sha256, object_key, size_bytes)"
            " VALUES ('{org}', repeat('a', 64), 'k', 1) ON CONFLICT DO NOTHING"
        ),
    ),
    "state.udf_bundle_versions_org": Fixture(
        "state",
        _sql(
            "INSERT INTO state.udf_bundles (org_id, sha256, object_key, size_bytes)"
            " VALUES ('{org}', repeat('a', 64), 'k', 1) ON CONFLICT DO NOTHING",
            "INSERT INTO state.udf_bundle_versions (org_id, name, version, sha256)"
            " VALUES ('{org}', 'u_{tag}', 1, repeat('a', 64))",
        ),
    ),
    "state.transform_definitions_org": Fixture(
        "state",
        _sql(
            "INSERT INTO state.transform_definitions (transform_id, org_id, name, job_name,"
            " chain_id, inputs, output_key, code_kind, on_input, spec, yaml_hash) VALUES"
            " ('{uid}', '{org}', 't_{tag}', 'j', 1, ARRAY['blocks'], 'o_{tag}', 'sql', true,"
            " '{{}}', 'h')"
        ),
    ),
    "state.source_events_org": Fixture(
        "state",
        _sql(
            "INSERT INTO state.source_events (source_event_id, org_id, job_name, kind,"
            " idempotency_key, body_sha256, task_id) VALUES ('{uid}', '{org}', 'j', 'manual',"
            " '{tag}', 'x', '{uid}')"
        ),
    ),
    "state.org_role_memberships_org": Fixture(
        "state",
        _sql(
            _USER,
            "INSERT INTO state.org_role_memberships (org_id, user_id, role)"
            " VALUES ('{org}', '{uid}', 'viewer') ON CONFLICT DO NOTHING",
        ),
    ),
    "state.users_org": Fixture(
        "state",
        _sql(
            _USER,
            "INSERT INTO state.org_role_memberships (org_id, user_id, role)"
            " VALUES ('{org}', '{uid}', 'viewer') ON CONFLICT DO NOTHING",
        ),
    ),
    "state.orgs_org": Fixture("state", lambda conn, org, tag: None),  # the org row itself
    "state.api_keys_org": Fixture(
        "state",
        _sql(
            "INSERT INTO state.api_keys (key_id, org_id, role, prefix, secret_hash) VALUES"
            " ('{uid}', '{org}', 'viewer', 'trk_x', sha256('{uid}'::text::bytea))"
        ),
    ),
    "state.audit_events_org": Fixture(
        "state",
        _sql(
            "INSERT INTO state.audit_events (org_id, actor, action, outcome)"
            " VALUES ('{org}', 'cli', 'test_{tag}', 'ok')"
        ),
    ),
    "data.query_audit_org": Fixture(
        "data",
        _sql(
            "INSERT INTO data.query_audit (query_id, org_id, user_sub, sql_sha256, duration_ms,"
            " outcome) VALUES ('{uid}', '{org}', 'u', 'x', 0, 'ok')"
        ),
    ),
    "data.hot_blocks_org": Fixture(
        "data",
        _sql(
            "INSERT INTO data.hot_blocks (chain_id, block_number, block_hash, parent_hash,"
            " org_id) VALUES (1, 7, '\\x00', '\\x00', '{org}')"
        ),
    ),
    "data.hot_transactions_org": Fixture(
        "data",
        _sql(
            "INSERT INTO data.hot_transactions (chain_id, block_number, transaction_index,"
            " block_hash, transaction_hash, org_id) VALUES (1, 7, 0, '\\x00', '\\x00', '{org}')"
        ),
    ),
    "data.hot_logs_org": Fixture(
        "data",
        _sql(
            "INSERT INTO data.hot_logs (chain_id, block_number, log_index, block_hash, org_id)"
            " VALUES (1, 7, 0, '\\x00', '{org}')"
        ),
    ),
    "data.data_invalidations_org": Fixture(
        "data",
        _sql(
            "INSERT INTO data.data_invalidations (chain_id, range_start, range_end, reason,"
            " org_id) VALUES (1, 0, 10, 'manual', '{org}')"
        ),
    ),
    "data.alert_events_org": Fixture("data", _sql(_EVENT)),
    "data.alert_deliveries_org": Fixture("data", _sql(_EVENT, _DELIVERY)),
    "data.alert_delivery_attempts_org": Fixture(
        "data",
        _sql(
            _EVENT,
            _DELIVERY,
            "INSERT INTO data.alert_delivery_attempts (delivery_id, attempt, channel_key,"
            " started_at, outcome, duration_ms) VALUES ('{uid}', 1, 'log', now(), 'delivered', 0)",
        ),
    ),
}


def _url(dbs: Databases, db: str) -> str:
    return dbs.state_url if db == "state" else dbs.data_url


def _policies(dbs: Databases) -> set[str]:
    found = set()
    for db in ("state", "data"):
        with connect(_url(dbs, db)) as conn:
            rows = conn.execute(
                "SELECT schemaname, policyname FROM pg_policies WHERE schemaname = %s", (db,)
            ).fetchall()
        found |= {f"{s}.{p}" for s, p in rows}
    return found


def test_policy_list_is_every_policy(filled: Databases) -> None:
    dbs = filled
    """The cases below cover exactly the policies the migrations create."""
    assert _policies(dbs) == set(POLICIES)


def test_every_table_is_tenant_or_global(filled: Databases) -> None:
    dbs = filled
    problems = []
    for db in ("state", "data"):
        with connect(_url(dbs, db)) as conn:
            rows = conn.execute(
                """SELECT n.nspname || '.' || c.relname, c.relrowsecurity, c.relforcerowsecurity,
                          EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid),
                          has_table_privilege('trace_tenant', c.oid,
                                              'SELECT,INSERT,UPDATE,DELETE'),
                          has_table_privilege('trace_tenant', c.oid, 'INSERT,UPDATE,DELETE'),
                          pg_get_userbyid(c.relowner)
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = %s AND c.relkind IN ('r', 'p')""",
                (db,),
            ).fetchall()
        for name, rls, forced, policy, any_priv, write_priv, owner in rows:
            assert owner not in ("trace_tenant", "trace_system"), f"{name} owned by {owner}"
            if name in GLOBAL_TABLES:
                ok = not write_priv if name in TENANT_READABLE_GLOBALS else not any_priv
                if not ok:
                    problems.append(f"{name}: global, but trace_tenant holds privileges on it")
            elif not (rls and forced and policy):
                problems.append(
                    f"{name}: neither a tenant table (rls={rls}, forced={forced}, "
                    f"policy={policy}) nor in GLOBAL_TABLES"
                )
    assert problems == []


def test_roles_own_nothing_and_tenant_cannot_bypass(filled: Databases) -> None:
    dbs = filled
    with connect(dbs.state_url) as conn:
        rows = dict(
            conn.execute(
                "SELECT rolname, rolbypassrls FROM pg_roles"
                " WHERE rolname IN ('trace_tenant', 'trace_system')"
            ).fetchall()
        )
        assert rows == {"trace_tenant": False, "trace_system": True}
        for db in ("state", "data"):
            with connect(_url(dbs, db)) as c:
                owned = c.execute(
                    "SELECT count(*) FROM pg_class WHERE pg_get_userbyid(relowner)"
                    " IN ('trace_tenant', 'trace_system') AND relkind IN ('r', 'p', 'v', 'm')"
                ).fetchone()
            assert owned == (0,)


@pytest.fixture
def two_orgs(dbs: Databases) -> Iterator[Databases]:
    with connect(dbs.state_url, autocommit=True) as conn:
        create_org(conn, "org-a", org_id=A_ORG)
        create_org(conn, "org-b", org_id=B_ORG)
    yield dbs


@pytest.fixture(scope="module")
def filled(clone_pool: ClonePool) -> Iterator[Databases]:
    """One clone for every policy case: orgs A and B, and a row of each in every tenant
    table (inserted as the connecting superuser, the system's view). The cases only read,
    and their refused writes roll back."""
    dbs = clone_pool.take()
    with connect(dbs.state_url, autocommit=True) as conn:
        create_org(conn, "org-a", org_id=A_ORG)
        create_org(conn, "org-b", org_id=B_ORG)
    for db in ("state", "data"):
        with connect(_url(dbs, db), autocommit=True) as conn, conn.transaction():
            for fixture in POLICIES.values():
                if fixture.db == db:
                    fixture.insert(conn, A_ORG, "a")
                    fixture.insert(conn, B_ORG, "b")
    yield dbs
    clone_pool.give_back(dbs)


def _visible(conn: psycopg.Connection[Any], table: str) -> set[str]:
    """The orgs whose rows of ``table`` this transaction sees (users: through their ids)."""
    if table == "state.users":
        owners = {str(uuid.uuid5(org, tag)): str(org) for org, tag in ((A_ORG, "a"), (B_ORG, "b"))}
        rows = conn.execute("SELECT user_id::text FROM state.users").fetchall()
        return {owners.get(r[0], r[0]) for r in rows}
    rows = conn.execute(f"SELECT org_id::text FROM {table}").fetchall()  # noqa: S608
    return {r[0] for r in rows}


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_policy_isolates_orgs(filled: Databases, policy: str) -> None:
    fixture = POLICIES[policy]
    table = policy.rsplit("_org", 1)[0]
    url = _url(filled, fixture.db)
    with connect(url, autocommit=True) as conn:
        assert {str(A_ORG), str(B_ORG)} <= _visible(conn, table)
        with tenant_scope(conn, A_ORG):
            assert conn.execute("SELECT current_user").fetchone() == ("trace_tenant",)
            assert _visible(conn, table) == {str(A_ORG)}
        with tenant_scope(conn, B_ORG):
            assert _visible(conn, table) == {str(B_ORG)}
        with conn.transaction():  # the tenant role with no org set sees nothing (fail closed)
            conn.execute("SET LOCAL ROLE trace_tenant")
            assert _visible(conn, table) == set()
        # the scope ended with its transaction: the session is its own user again
        assert conn.execute("SELECT current_user").fetchone() != ("trace_tenant",)
        # org A can neither hand a row to org B nor (orgs, users) write at all
        change = (
            "UPDATE state.users SET email = email"
            if table == "state.users"
            else f"UPDATE {table} SET org_id = '{B_ORG}' WHERE org_id = '{A_ORG}'"  # noqa: S608
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_scope(conn, A_ORG):
            conn.execute(change)
        assert {str(A_ORG), str(B_ORG)} <= _visible(conn, table)


def test_runtime_connections_take_their_roles(two_orgs: Databases, settings: Settings) -> None:
    """The system's connections run as trace_system (owns nothing, sees every org); a tenant
    runtime (the CLI with --org) as trace_tenant, seeing its org alone."""
    with connect(two_orgs.state_url, autocommit=True) as conn:
        for org, tag in ((A_ORG, "a"), (B_ORG, "b")):
            POLICIES["state.datasets_org"].insert(conn, org, tag)
    count = "SELECT current_user, count(*) FROM state.datasets"
    with Runtime(settings).state() as conn:
        assert conn.execute(count).fetchone() == ("trace_system", 2)
    tenant = Runtime(settings.model_copy(update={"org_id": str(A_ORG)}), tenant=True)
    with tenant.state() as conn:
        assert conn.execute(count).fetchone() == ("trace_tenant", 1)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM state.queue_messages")
