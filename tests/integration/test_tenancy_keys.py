"""Orgs, users, memberships and API keys on a real Postgres (trace_core.tenancy)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from trace_core.db.connection import Databases, connect
from trace_core.errors import ConfigError, Conflict, Forbidden, NotFound, Unauthenticated
from trace_core.tenancy import (
    Role,
    add_user,
    authenticate_key,
    create_key,
    create_org,
    default_org_id,
    list_keys,
    list_members,
    member_role,
    org_by_name,
    revoke_key,
    set_member,
)


def test_roles_are_ordered() -> None:
    assert Role.VIEWER < Role.EDITOR < Role.ADMIN < Role.OWNER
    assert Role.ADMIN.permits(Role.EDITOR) and not Role.EDITOR.permits(Role.ADMIN)
    assert Role.parse(" Admin ") is Role.ADMIN
    with pytest.raises(ConfigError, match="one of: viewer, editor, admin, owner"):
        Role.parse("god")


def test_default_org_exists(dbs: Databases) -> None:
    with connect(dbs.state_url, autocommit=True) as conn:
        assert org_by_name(conn, "default").org_id == default_org_id()


def _audit(conn, action: str) -> list[tuple]:  # type: ignore[no-untyped-def]
    return conn.execute(
        "SELECT org_id, outcome, detail FROM state.audit_events WHERE action = %s"
        " ORDER BY event_id",
        (action,),
    ).fetchall()


def test_key_lifecycle(dbs: Databases) -> None:
    with connect(dbs.state_url, autocommit=True) as conn:
        a = create_org(conn, "acme")
        b = create_org(conn, "beta")
        with pytest.raises(Conflict):
            create_org(conn, "acme")
        with pytest.raises(ConfigError, match="invalid org name"):
            create_org(conn, "Bad Name")
        record, secret = create_key(conn, a.org_id, "editor", name="ci")
        assert secret.startswith("trk_") and len(secret) == 52
        assert record.prefix == secret[:12] and record.role is Role.EDITOR
        stored = conn.execute(
            "SELECT secret_hash FROM state.api_keys WHERE key_id = %s", (record.key_id,)
        ).fetchone()
        assert stored is not None and secret.encode() not in bytes(stored[0])

        who = authenticate_key(conn, secret)
        assert (who.org_id, who.org_name, who.role, who.key_id) == (
            a.org_id,
            "acme",
            Role.EDITOR,
            record.key_id,
        )
        assert list_keys(conn, a.org_id)[0].last_used_at is not None
        who.require(Role.EDITOR, "apply a job")
        with pytest.raises(Forbidden, match="needs role admin"):
            who.require(Role.ADMIN, "create a key")

        # another org neither lists nor revokes it (404, not 403)
        assert list_keys(conn, b.org_id) == []
        with pytest.raises(NotFound):
            revoke_key(conn, b.org_id, record.key_id)
        assert revoke_key(conn, a.org_id, record.key_id) is True
        assert revoke_key(conn, a.org_id, record.key_id) is False
        with pytest.raises(Unauthenticated, match="revoked") as refused:
            authenticate_key(conn, secret)
        assert secret not in str(refused.value)

        for bad in ("nope", "trk_" + "0" * 48):
            with pytest.raises(Unauthenticated):
                authenticate_key(conn, bad)
        rows = _audit(conn, "auth")
        assert [(r[0], r[1]) for r in rows] == [
            (a.org_id, "refused"),
            (None, "refused"),
            (None, "refused"),
        ]
        assert all(secret not in (r[2] or "") for r in rows)


def test_expired_key_is_refused(dbs: Databases) -> None:
    with connect(dbs.state_url, autocommit=True) as conn:
        org = create_org(conn, "exp")
        with pytest.raises(ConfigError, match="in the past"):
            create_key(conn, org.org_id, "viewer", expires_at=datetime.now(UTC) - timedelta(1))
        record, secret = create_key(
            conn, org.org_id, "viewer", expires_at=datetime.now(UTC) + timedelta(days=1)
        )
        assert authenticate_key(conn, secret).role is Role.VIEWER
        conn.execute(
            "UPDATE state.api_keys SET expires_at = now() - interval '1 second' WHERE key_id = %s",
            (record.key_id,),
        )
        with pytest.raises(Unauthenticated, match="expired"):
            authenticate_key(conn, secret)


def test_members(dbs: Databases) -> None:
    with connect(dbs.state_url, autocommit=True) as conn:
        a = create_org(conn, "team-a")
        b = create_org(conn, "team-b")
        ann = add_user(conn, "ann@example.com", name="Ann")
        bob = add_user(conn, "bob@example.com")
        with pytest.raises(Conflict):
            add_user(conn, "ann@example.com")
        with pytest.raises(ConfigError, match="invalid email"):
            add_user(conn, "not-an-email")
        set_member(conn, a.org_id, ann.user_id, "owner")
        set_member(conn, b.org_id, bob.user_id, Role.VIEWER)
        set_member(conn, a.org_id, bob.user_id, "editor")
        assert [(m.email, m.role) for m in list_members(conn, a.org_id)] == [
            ("ann@example.com", Role.OWNER),
            ("bob@example.com", Role.EDITOR),
        ]
        assert [m.email for m in list_members(conn, b.org_id)] == ["bob@example.com"]
        assert member_role(conn, b.org_id, bob.user_id) is Role.VIEWER
        with pytest.raises(NotFound):
            member_role(conn, b.org_id, ann.user_id)


def test_task_inputs_take_the_task_org(dbs: Databases) -> None:
    from trace_core.tenancy import record_task_inputs, task_inputs, tenant_scope

    with connect(dbs.state_url, autocommit=True) as conn:
        org = create_org(conn, "inputs")
        conn.execute(
            "INSERT INTO state.datasets (dataset_uuid, org_id, chain_id, dataset_key)"
            " VALUES ('00000000-0000-0000-0000-0000000000d1', %s, 1, 'blocks')",
            (org.org_id,),
        )
        conn.execute(
            "INSERT INTO state.dataset_versions (dataset_version, dataset_uuid, chain_id,"
            " range_start, range_end, config_hash, schema_hash, storage_prefix, manifest_key,"
            " row_count, bytes, file_count) VALUES ('00000000-0000-0000-0000-0000000000e1',"
            " '00000000-0000-0000-0000-0000000000d1', 1, 0, 10, 'c', 's', 'v/1/', 'v/1/m', 0,"
            " 0, 0)"
        )
        conn.execute(
            "INSERT INTO state.tasks (task_id, operator, org_id)"
            " VALUES ('00000000-0000-0000-0000-0000000000f1', 't', %s)",
            (org.org_id,),
        )
        task = uuid.UUID("00000000-0000-0000-0000-0000000000f1")
        version = uuid.UUID("00000000-0000-0000-0000-0000000000e1")
        assert record_task_inputs(conn, task, [version]) == 1
        assert record_task_inputs(conn, task, [version]) == 0
        (row,) = task_inputs(conn, task)
        assert (row.org_id, row.storage_prefix) == (org.org_id, "v/1/")
        with tenant_scope(conn, default_org_id()):
            assert task_inputs(conn, task) == []
