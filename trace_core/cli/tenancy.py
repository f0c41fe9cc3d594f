"""``trace-lite org|user|key``: orgs, users and memberships, API keys (docs/tenancy.md).

These are the operator's commands on the host (they run as ``trace_system``). Every change
and every refusal leaves a row in ``state.audit_events``; a refused command changes nothing.
``key create`` prints the new secret once, alone on the last line of stdout.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from psycopg import Connection
from rich.table import Table

from trace_core.cli.common import console, handle_errors
from trace_core.errors import ConfigError, TraceError
from trace_core.runtime import Runtime
from trace_core.settings import load_settings
from trace_core.tenancy import (
    Org,
    Role,
    add_user,
    create_key,
    create_org,
    list_keys,
    list_members,
    list_orgs,
    org_by_id,
    org_by_name,
    record_event,
    revoke_key,
    set_member,
    user_by_email,
)

ROLES = [r.value for r in Role]
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_expires(text: str, now: datetime | None = None) -> datetime:
    """``30d``/``12h``/``90m``/``2w`` from now, or an ISO 8601 date or time (UTC when no
    zone is given). Raises ``ConfigError`` naming the option."""
    now = now or datetime.now(UTC)
    m = _DURATION.match(text.strip())
    if m:
        return now + timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"cannot read {text!r}: use a duration (30d, 12h, 90m, 2w) or an ISO 8601 time",
            field="--expires",
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@contextmanager
def _audited(
    conn: Connection[Any], action: str, org: Org | None = None
) -> Iterator[dict[str, Any]]:
    """Record the command's outcome: ``ok`` with the detail the block sets, or ``refused``
    with the error (re-raised)."""
    out: dict[str, Any] = {"detail": None, "org": org}
    try:
        yield out
    except TraceError as exc:
        org_id = out["org"].org_id if out["org"] else None
        record_event(conn, org_id=org_id, actor="cli", action=action, outcome="refused",
                     detail=str(exc))  # fmt: skip
        raise
    org_id = out["org"].org_id if out["org"] else None
    record_event(conn, org_id=org_id, actor="cli", action=action, outcome="ok",
                 detail=out["detail"])  # fmt: skip


def _system() -> Runtime:
    return Runtime(load_settings())


def _org(conn: Connection[Any], name: str | None) -> Org:
    """The org named ``name``, or the deployment's own org."""
    if name is None:
        return org_by_id(conn, load_settings().org_id)
    return org_by_name(conn, name)


# --- org -----------------------------------------------------------------------------


@click.group()
def org() -> None:
    """Organisations: every tenant row belongs to one."""


@org.command("create")
@click.argument("name")
@handle_errors
def org_create(name: str) -> None:
    """Create an org named NAME (a-z, 0-9, '-', '_')."""
    with _system().state() as conn, _audited(conn, "org.create") as audit:
        made = create_org(conn, name)
        audit.update(org=made, detail=f"org {made.name}")
    console.print(f"org_id={made.org_id} name={made.name} created", highlight=False)


@org.command("list")
@handle_errors
def org_list() -> None:
    """Every org."""
    with _system().state() as conn:
        orgs = list_orgs(conn)
    table = Table("org_id", "name", "created_at")
    for o in orgs:
        table.add_row(str(o.org_id), o.name, o.created_at.isoformat(timespec="seconds"))
    console.print(table)


# --- user ----------------------------------------------------------------------------


@click.group()
def user() -> None:
    """Users and their roles in orgs."""


@user.command("add")
@click.argument("email")
@click.option("--name", default=None, help="Display name")
@click.option("--org", "org_name", default=None, help="Make the user a member of this org")
@click.option(
    "--role", type=click.Choice(ROLES), default="viewer", show_default=True, help="Role in --org"
)
@handle_errors
def user_add(email: str, name: str | None, org_name: str | None, role: str) -> None:
    """Add a user by EMAIL (an existing one is reused) and make it a member of --org (default:
    the deployment's org) with --role."""
    with _system().state() as conn, _audited(conn, "user.add") as audit:
        target = _org(conn, org_name)
        audit["org"] = target
        try:
            who = user_by_email(conn, email)
        except TraceError:
            who = add_user(conn, email, name=name)
        granted = set_member(conn, target.org_id, who.user_id, role)
        audit["detail"] = f"user {who.user_id} {granted.value}"
    console.print(
        f"user_id={who.user_id} email={who.email} org={target.name} role={granted.value}",
        highlight=False,
    )


@user.command("list")
@click.option("--org", "org_name", default=None, help="Org name (default: the deployment's)")
@handle_errors
def user_list(org_name: str | None) -> None:
    """The org's members and their roles."""
    with _system().state() as conn:
        target = _org(conn, org_name)
        members = list_members(conn, target.org_id)
    table = Table("user_id", "email", "name", "role")
    for m in members:
        table.add_row(str(m.user_id), m.email, m.name or "", m.role.value)
    console.print(table)


# --- key -----------------------------------------------------------------------------


@click.group()
def key() -> None:
    """API keys: a bearer secret for the HTTP API and `trace-lite query --api-key`."""


@key.command("create")
@click.option("--org", "org_name", default=None, help="Org name (default: the deployment's)")
@click.option("--role", required=True, help=f"One of: {', '.join(ROLES)}")
@click.option("--expires", default=None, help="30d, 12h, 2w, or an ISO 8601 time (default: never)")
@click.option("--name", default=None, help="A label shown in `key list`")
@click.option("--user", "email", default=None, help="The member (email) the key acts for")
@handle_errors
def key_create(
    org_name: str | None, role: str, expires: str | None, name: str | None, email: str | None
) -> None:
    """Create a key. Its secret is printed once, alone on the last line; only its hash is
    kept."""
    with _system().state() as conn, _audited(conn, "key.create") as audit:
        target = _org(conn, org_name)
        audit["org"] = target
        parsed = Role.parse(role, field="--role")
        when = parse_expires(expires) if expires else None
        user_id: uuid.UUID | None = None
        if email is not None:
            user_id = user_by_email(conn, email).user_id
        record, secret = create_key(
            conn, target.org_id, parsed, name=name, expires_at=when, user_id=user_id
        )
        audit["detail"] = f"key {record.key_id} {record.prefix} {parsed.value}"
    expiry = record.expires_at.isoformat(timespec="seconds") if record.expires_at else "never"
    click.echo(
        f"key_id={record.key_id} org={target.name} role={record.role.value} "
        f"prefix={record.prefix} expires={expiry}"
    )
    click.echo("the secret below is shown once; store it now:", err=True)
    click.echo(secret)


@key.command("list")
@click.option("--org", "org_name", default=None, help="Org name (default: the deployment's)")
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
@handle_errors
def key_list(org_name: str | None, as_json: bool) -> None:
    """The org's keys (never their secrets)."""
    with _system().state() as conn:
        target = _org(conn, org_name)
        keys = list_keys(conn, target.org_id)
    if as_json:
        rows = [
            {
                "key_id": str(k.key_id),
                "prefix": k.prefix,
                "role": k.role.value,
                "name": k.name,
                "state": k.state(),
                "expires_at": k.expires_at.isoformat() if k.expires_at else None,
                "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
            }
            for k in keys
        ]
        click.echo(json.dumps({"org": target.name, "keys": rows}, indent=2))
        return
    table = Table("key_id", "prefix", "role", "name", "state", "expires_at", "last_used_at")
    for k in keys:
        table.add_row(
            str(k.key_id),
            k.prefix,
            k.role.value,
            k.name or "",
            k.state(),
            k.expires_at.isoformat(timespec="seconds") if k.expires_at else "",
            k.last_used_at.isoformat(timespec="seconds") if k.last_used_at else "",
        )
    console.print(table)


@key.command("revoke")
@click.argument("key_id")
@click.option("--org", "org_name", default=None, help="Org name (default: the deployment's)")
@handle_errors
def key_revoke(key_id: str, org_name: str | None) -> None:
    """Revoke the org's key KEY_ID (at once; an already revoked key is left as it is)."""
    with _system().state() as conn, _audited(conn, "key.revoke") as audit:
        target = _org(conn, org_name)
        audit["org"] = target
        try:
            kid = uuid.UUID(key_id)
        except ValueError:
            raise ConfigError(f"not a key id: {key_id!r}", field="KEY_ID") from None
        changed = revoke_key(conn, target.org_id, kid)
        audit["detail"] = f"key {kid} {'revoked' if changed else 'already revoked'}"
    console.print(f"key_id={kid} {'revoked' if changed else 'was already revoked'}")
