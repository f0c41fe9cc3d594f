"""``/v1/keys``: an org's API keys (admins and owners). The secret is in the creation answer
only; lists show the short prefix. A key can be given at most its creator's role."""

from __future__ import annotations

import uuid

from trace_core.api import models as m
from trace_core.api.http import Call, Reply, not_found
from trace_core.errors import Forbidden
from trace_core.tenancy import Role, create_key, list_keys, revoke_key


def _info(record: object) -> dict[str, object]:
    fields = ("key_id", "prefix", "name", "created_at", "expires_at", "last_used_at", "revoked_at")
    out = {f: getattr(record, f) for f in fields}
    out["role"] = record.role.value  # type: ignore[attr-defined]
    return out


def create_api_key(call: Call) -> Reply:
    """Create a key of the caller's org; the answer carries its secret, once."""
    body = call.model(m.KeyCreate)
    role = Role.parse(body.role)
    if not call.principal.role.permits(role):
        raise Forbidden(
            f"a {call.principal.role.value} key cannot create a {role.value} key",
            required=role.value,
            role=call.principal.role.value,
        )
    with call.api.state.connection() as conn:
        record, secret = create_key(
            conn,
            call.org_id,
            role,
            name=body.name,
            expires_at=body.expires_at,
            user_id=call.principal.user_id,
        )
    call.audit_target.append(str(record.key_id))
    return 201, m.KeyCreated(**_info(record), secret=secret)  # type: ignore[arg-type]


def list_api_keys(call: Call) -> Reply:
    """The org's keys, revoked and expired included (never a secret)."""
    with call.api.state.connection() as conn:
        records = list_keys(conn, call.org_id)
    return m.KeyList(keys=[m.KeyInfo(**_info(r)) for r in records])  # type: ignore[arg-type]


def revoke_api_key(call: Call) -> Reply:
    """Revoke one of the org's keys (idempotent); another org's key answers 404."""
    raw = call.params["key_id"]
    try:
        key_id = uuid.UUID(raw)
    except ValueError:
        raise not_found("api key", raw) from None
    with call.api.state.connection() as conn:
        revoke_key(conn, call.org_id, key_id)
    return m.KeyRevoked(key_id=key_id)
