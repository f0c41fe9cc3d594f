"""API keys: created once (the secret is shown once), stored as a sha256 hash with a short
prefix for lists, optionally expiring, revocable; ``authenticate_key`` turns a presented
secret into a ``Principal``.

A secret is ``trk_`` + 48 hex digits (192 random bits): a fast hash is enough for a secret
that cannot be guessed, and keeps authentication well under a millisecond.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

from trace_core.db.errors import db_errors
from trace_core.db.queries import q
from trace_core.errors import ConfigError, NotFound, Unauthenticated
from trace_core.tenancy.audit import record_event
from trace_core.tenancy.roles import Principal, Role
from trace_core.tenancy.scope import tenant_scope

KEY_PREFIX = "trk_"
PREFIX_CHARS = 12  # what lists show: "trk_" + 8 hex digits
_KEY = re.compile(r"^trk_[0-9a-f]{48}$")
TOUCH_EVERY = timedelta(seconds=60)  # last_used_at is refreshed at most this often


@dataclass(frozen=True)
class KeyRecord:
    """An API key as stored (never its secret)."""

    key_id: uuid.UUID
    org_id: uuid.UUID
    user_id: uuid.UUID | None
    name: str | None
    role: Role
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    def state(self, now: datetime | None = None) -> str:
        """'active', 'expired' or 'revoked'."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or datetime.now(UTC)):
            return "expired"
        return "active"


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_hex(24)


def _record(row: dict[str, Any]) -> KeyRecord:
    return KeyRecord(**{**row, "role": Role(row["role"])})


def create_key(
    conn: Connection[Any],
    org_id: uuid.UUID | str,
    role: Role | str,
    *,
    name: str | None = None,
    expires_at: datetime | None = None,
    user_id: uuid.UUID | None = None,
) -> tuple[KeyRecord, str]:
    """A new key of the org and its secret (returned here only, stored hashed).

    Raises ``ConfigError`` for an unknown role or an expiry in the past."""
    parsed = Role.parse(role)
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise ConfigError(f"expiry {expires_at.isoformat()} is in the past", field="expires")
    secret = new_secret()
    params = {
        "key_id": uuid.uuid4(),
        "org_id": str(org_id),
        "user_id": user_id,
        "name": name,
        "role": parsed.value,
        "prefix": secret[:PREFIX_CHARS],
        "secret_hash": secret_hash(secret),
        "expires_at": expires_at,
    }
    with (
        tenant_scope(conn, org_id),
        db_errors("create api key"),
        conn.cursor(row_factory=dict_row) as cur,
    ):
        row = cur.execute(q("tenancy", "insert_key"), params).fetchone()
    assert row is not None
    return _record(row), secret


def list_keys(conn: Connection[Any], org_id: uuid.UUID | str) -> list[KeyRecord]:
    """The org's keys (revoked and expired included), oldest first."""
    with (
        tenant_scope(conn, org_id),
        db_errors("list api keys"),
        conn.cursor(row_factory=dict_row) as cur,
    ):
        rows = cur.execute(q("tenancy", "list_keys"), {"org_id": str(org_id)}).fetchall()
    return [_record(row) for row in rows]


def revoke_key(conn: Connection[Any], org_id: uuid.UUID | str, key_id: uuid.UUID | str) -> bool:
    """Revoke the org's key ``key_id``: True when this call revoked it, False when it was
    already revoked. Raises ``NotFound`` when the org has no such key (another org's key
    included)."""
    params = {"org_id": str(org_id), "key_id": str(key_id)}
    with tenant_scope(conn, org_id), db_errors("revoke api key"):
        if conn.execute(q("tenancy", "revoke_key"), params).fetchone() is not None:
            return True
        if conn.execute(q("tenancy", "key_exists"), params).fetchone() is None:
            raise NotFound(f"no api key {key_id} in this org", key_id=str(key_id))
    return False


def authenticate_key(conn: Connection[Any], secret: str, *, audit: bool = True) -> Principal:
    """The principal of a presented API key.

    Raises ``Unauthenticated`` for a malformed, unknown, expired or revoked key (after an
    audit row, unless ``audit`` is False); the message never echoes the key. One read; the
    key's ``last_used_at`` is refreshed (a second statement) at most once a minute.
    """
    secret = secret.strip()
    if not _KEY.match(secret):
        _refuse(conn, None, "malformed api key", audit)
    with db_errors("authenticate api key"), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(q("tenancy", "authenticate"), {"secret_hash": secret_hash(secret)})
        found = row.fetchone()
    if found is None:
        _refuse(conn, None, "unknown api key", audit)
    assert found is not None
    if found["revoked_at"] is not None:
        _refuse(conn, found, "api key has been revoked", audit)
    now = datetime.now(UTC)
    if found["expires_at"] is not None and found["expires_at"] <= now:
        _refuse(conn, found, "api key has expired", audit)
    if found["last_used_at"] is None or now - found["last_used_at"] > TOUCH_EVERY:
        with db_errors("api key last use"):
            conn.execute(q("tenancy", "touch_key"), {"key_id": found["key_id"]})
    return Principal(
        org_id=found["org_id"],
        org_name=found["org_name"],
        role=Role(found["role"]),
        key_id=found["key_id"],
        user_id=found["user_id"],
    )


def _refuse(conn: Connection[Any], found: dict[str, Any] | None, why: str, audit: bool) -> None:
    if audit:
        record_event(
            conn,
            org_id=found["org_id"] if found else None,
            actor=f"key:{found['key_id']}" if found else "anonymous",
            action="auth",
            outcome="refused",
            detail=why,
        )
    raise Unauthenticated(why)
