"""Tenancy: orgs, users, roles, API keys, and the per-transaction org scope that Postgres
row-level security enforces (docs/tenancy.md)."""

from trace_core.tenancy.audit import record_event, system_scope
from trace_core.tenancy.inputs import TaskInput, record_task_inputs, task_inputs
from trace_core.tenancy.keys import (
    KeyRecord,
    authenticate_key,
    create_key,
    list_keys,
    revoke_key,
)
from trace_core.tenancy.orgs import (
    DEFAULT_ORG_NAME,
    Member,
    Org,
    User,
    add_user,
    create_org,
    default_org_id,
    list_members,
    list_orgs,
    member_role,
    org_by_id,
    org_by_name,
    remove_member,
    set_member,
    user_by_email,
)
from trace_core.tenancy.roles import Principal, Role
from trace_core.tenancy.scope import (
    ORG_SETTING,
    SYSTEM_ROLE,
    TENANT_ROLE,
    tenant_conninfo_options,
    tenant_scope,
)

__all__ = [
    "DEFAULT_ORG_NAME",
    "ORG_SETTING",
    "SYSTEM_ROLE",
    "TENANT_ROLE",
    "KeyRecord",
    "Member",
    "Org",
    "Principal",
    "Role",
    "TaskInput",
    "User",
    "add_user",
    "authenticate_key",
    "create_key",
    "create_org",
    "default_org_id",
    "list_keys",
    "list_members",
    "list_orgs",
    "member_role",
    "org_by_id",
    "org_by_name",
    "record_event",
    "record_task_inputs",
    "remove_member",
    "revoke_key",
    "set_member",
    "system_scope",
    "task_inputs",
    "tenant_conninfo_options",
    "tenant_scope",
    "user_by_email",
]
