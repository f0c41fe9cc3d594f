"""The four org roles and the authenticated caller (``Principal``)."""

from __future__ import annotations

import enum
import functools
import uuid
from dataclasses import dataclass

from trace_core.errors import ConfigError, Forbidden


@functools.total_ordering
class Role(enum.Enum):
    """An org role; ordered viewer < editor < admin < owner, each permitting what lower ranks
    do (viewers read; editors write jobs, alerts and UDFs; admins manage keys and members;
    owners the org)."""

    VIEWER = "viewer"
    EDITOR = "editor"
    ADMIN = "admin"
    OWNER = "owner"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self.rank < other.rank

    def permits(self, required: Role) -> bool:
        """Whether this role may do what ``required`` may."""
        return self.rank >= required.rank

    @classmethod
    def parse(cls, value: str | Role, *, field: str = "role") -> Role:
        """The role named ``value``; ``ConfigError`` naming the valid ones otherwise."""
        if isinstance(value, Role):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            names = ", ".join(r.value for r in cls)
            raise ConfigError(f"unknown role {value!r} (one of: {names})", field=field) from None


_RANKS = {Role.VIEWER: 10, Role.EDITOR: 20, Role.ADMIN: 30, Role.OWNER: 40}


@dataclass(frozen=True)
class Principal:
    """Who is calling: an org, a role in it, and the key (and user) that proved it."""

    org_id: uuid.UUID
    org_name: str
    role: Role
    key_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None

    @property
    def actor(self) -> str:
        """How audit rows name this caller (never a secret)."""
        if self.key_id is not None:
            return f"key:{self.key_id}"
        if self.user_id is not None:
            return f"user:{self.user_id}"
        return "cli"

    def require(self, required: Role, action: str) -> None:
        """Raise ``Forbidden`` unless this principal's role permits ``required``."""
        if not self.role.permits(required):
            raise Forbidden(
                f"{action} needs role {required.value} or higher (this key has {self.role.value})",
                required=required.value,
                role=self.role.value,
            )
