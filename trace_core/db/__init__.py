"""Postgres access: URL resolution (embedded or configured), connections, migrations, queries."""

from trace_core.db.connection import Databases, connect, redact_url, resolve_databases

__all__ = ["Databases", "connect", "redact_url", "resolve_databases"]
