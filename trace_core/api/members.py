"""``/v1/members``: an org's members and their roles (admins and owners). A member is a user
(by email, global) with a role in the org; an admin may give at most its own role and may not
change or remove a member ranked above it."""

from __future__ import annotations

import contextlib
from typing import Any

from trace_core.api import models as m
from trace_core.api.http import Call, Reply, not_found
from trace_core.errors import Forbidden, NotFound
from trace_core.tenancy import (
    Role,
    add_user,
    list_members,
    member_role,
    remove_member,
    set_member,
    user_by_email,
)


def _member(row: Any) -> m.MemberInfo:
    return m.MemberInfo(
        user_id=row.user_id,
        email=row.email,
        name=row.name,
        role=row.role.value,
        created_at=row.created_at,
    )


def _may_manage(call: Call, role: Role, action: str) -> None:
    mine = call.principal.role
    if not mine.permits(role):
        raise Forbidden(
            f"a {mine.value} key cannot {action} a {role.value}",
            required=role.value,
            role=mine.value,
        )


def list_org_members(call: Call) -> Reply:
    """The org's members with their roles, by email."""
    with call.api.state.connection() as conn:
        rows = list_members(conn, call.org_id)
    return m.MemberList(members=[_member(r) for r in rows])


def set_org_member(call: Call) -> Reply:
    """Give the user with this email a role in the org (the user is created if new)."""
    email = call.params["email"]
    role = Role.parse(call.model(m.MemberSet).role)
    _may_manage(call, role, "grant the role of")
    with call.api.state.connection() as conn:
        try:
            user = user_by_email(conn, email)
        except NotFound:
            user = add_user(conn, email)
        with contextlib.suppress(NotFound):  # a member already: may the caller change it?
            _may_manage(call, member_role(conn, call.org_id, user.user_id), "change")
        set_member(conn, call.org_id, user.user_id, role)
        got = next(r for r in list_members(conn, call.org_id) if r.user_id == user.user_id)
    return _member(got)


def remove_org_member(call: Call) -> Reply:
    """Remove a member from the org (the user and its other orgs stay)."""
    email = call.params["email"]
    with call.api.state.connection() as conn:
        try:
            user = user_by_email(conn, email)
            current = member_role(conn, call.org_id, user.user_id)
        except NotFound:
            raise not_found("member", email) from None
        _may_manage(call, current, "remove")
        remove_member(conn, call.org_id, user.user_id)
    return m.MemberRemoved(email=email)
