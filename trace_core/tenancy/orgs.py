"""Organisations, users and their memberships (roles) in ``state``.

Org and user lookups by name run as ``trace_system`` (the org is not known yet);
memberships are an org's rows and are read and written inside ``tenant_scope``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

from trace_core.db.errors import db_errors
from trace_core.db.queries import q
from trace_core.errors import ConfigError, Conflict, NotFound
from trace_core.settings import DEFAULT_ORG_ID
from trace_core.tenancy.audit import system_scope
from trace_core.tenancy.roles import Role
from trace_core.tenancy.scope import tenant_scope

DEFAULT_ORG_NAME = "default"
_ORG_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


@dataclass(frozen=True)
class Org:
    org_id: uuid.UUID
    name: str
    created_at: datetime


@dataclass(frozen=True)
class User:
    user_id: uuid.UUID
    email: str
    name: str | None
    created_at: datetime


@dataclass(frozen=True)
class Member:
    user_id: uuid.UUID
    email: str
    name: str | None
    role: Role
    created_at: datetime


def check_org_name(name: str) -> str:
    """``name`` if it is a valid org name; ``ConfigError`` saying the rule otherwise."""
    if not _ORG_NAME.match(name):
        raise ConfigError(
            f"invalid org name {name!r}: 1-63 of a-z, 0-9, '-', '_', starting with a letter "
            "or digit",
            field="name",
        )
    return name


def create_org(conn: Connection[Any], name: str, *, org_id: uuid.UUID | None = None) -> Org:
    """A new org. Raises ``ConfigError`` for a bad name, ``Conflict`` when it is taken."""
    check_org_name(name)
    params = {"org_id": org_id or uuid.uuid4(), "name": name}
    with system_scope(conn), db_errors("create org"), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(q("tenancy", "insert_org"), params).fetchone()
    if row is None:
        raise Conflict(
            f"org {name!r} already exists, or one whose name differs only in '-' and '_' "
            "(both would have the same Dagster key prefix)",
            org=name,
        )
    return Org(**row)


def org_by_name(conn: Connection[Any], name: str) -> Org:
    """The org named ``name``; ``NotFound`` otherwise."""
    with system_scope(conn), db_errors("org lookup"), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(q("tenancy", "org_by_name"), {"name": name}).fetchone()
    if row is None:
        raise NotFound(f"no org named {name!r}", org=name)
    return Org(**row)


def org_by_id(conn: Connection[Any], org_id: uuid.UUID | str) -> Org:
    """The org with this id; ``NotFound`` otherwise."""
    with system_scope(conn), db_errors("org lookup"), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(q("tenancy", "org_by_id"), {"org_id": str(org_id)}).fetchone()
    if row is None:
        raise NotFound(f"no org with id {org_id}", org=str(org_id))
    return Org(**row)


def list_orgs(conn: Connection[Any]) -> list[Org]:
    """Every org (an operator's view, as ``trace_system``)."""
    with system_scope(conn), db_errors("list orgs"), conn.cursor(row_factory=dict_row) as cur:
        return [Org(**row) for row in cur.execute(q("tenancy", "list_orgs")).fetchall()]


def default_org_id() -> uuid.UUID:
    return uuid.UUID(DEFAULT_ORG_ID)


def add_user(conn: Connection[Any], email: str, *, name: str | None = None) -> User:
    """A new user (global: one user may be a member of many orgs). Raises ``ConfigError`` for
    a malformed email, ``Conflict`` when the email is taken."""
    if not _EMAIL.match(email):
        raise ConfigError(f"invalid email {email!r}", field="email")
    params = {"user_id": uuid.uuid4(), "email": email, "name": name}
    with system_scope(conn), db_errors("add user"), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(q("tenancy", "insert_user"), params).fetchone()
    if row is None:
        raise Conflict(f"user {email!r} already exists", email=email)
    return User(**row)


def user_by_email(conn: Connection[Any], email: str) -> User:
    """The user with this email; ``NotFound`` otherwise."""
    with system_scope(conn), db_errors("user lookup"), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(q("tenancy", "user_by_email"), {"email": email}).fetchone()
    if row is None:
        raise NotFound(f"no user {email!r}", email=email)
    return User(**row)


def set_member(
    conn: Connection[Any], org_id: uuid.UUID | str, user_id: uuid.UUID, role: Role | str
) -> Role:
    """Make ``user_id`` a member of the org with ``role`` (or change its role)."""
    parsed = Role.parse(role)
    params = {"org_id": str(org_id), "user_id": user_id, "role": parsed.value}
    with tenant_scope(conn, org_id), db_errors("set member"):
        conn.execute(q("tenancy", "upsert_membership"), params)
    return parsed


def member_role(conn: Connection[Any], org_id: uuid.UUID | str, user_id: uuid.UUID) -> Role:
    """The user's role in the org; ``NotFound`` when not a member."""
    params = {"org_id": str(org_id), "user_id": user_id}
    with tenant_scope(conn, org_id), db_errors("member role"):
        row = conn.execute(q("tenancy", "membership_role"), params).fetchone()
    if row is None:
        raise NotFound(f"user {user_id} is not a member of this org")
    return Role(row[0])


def remove_member(conn: Connection[Any], org_id: uuid.UUID | str, user_id: uuid.UUID) -> bool:
    """Remove the membership; whether there was one."""
    params = {"org_id": str(org_id), "user_id": user_id}
    with tenant_scope(conn, org_id), db_errors("remove member"):
        return conn.execute(q("tenancy", "delete_membership"), params).rowcount > 0


def list_members(conn: Connection[Any], org_id: uuid.UUID | str) -> list[Member]:
    """The org's members with their roles, by email."""
    with (
        tenant_scope(conn, org_id),
        db_errors("list members"),
        conn.cursor(row_factory=dict_row) as cur,
    ):
        rows = cur.execute(q("tenancy", "list_members"), {"org_id": str(org_id)}).fetchall()
    return [Member(**{**row, "role": Role(row["role"])}) for row in rows]
