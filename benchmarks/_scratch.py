"""Throwaway databases for a benchmark run (imported by the bench_*.py scripts)."""

from __future__ import annotations

import atexit
import os
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from trace_core.db.connection import Databases, ensure_database, with_database
from trace_core.db.migrate import migrate


def scratch_databases(home: Path, prefix: str = "bench") -> Databases:
    """Migrated state and data databases on ``TRACE_DATABASE_URL`` (dropped at exit), else on
    an embedded server under ``home`` that stops when the benchmark exits."""
    server = os.environ.get("TRACE_DATABASE_URL")
    if not server:
        from trace_core.db.embedded import embedded_server_uri

        server = embedded_server_uri(home, persistent=False)
    else:
        atexit.register(_drop, server)
    suffix = uuid.uuid4().hex[:8]
    names = (f"{prefix}_{suffix}_state", f"{prefix}_{suffix}_data")
    for name in names:
        ensure_database(server, name)
    dbs = Databases(with_database(server, names[0]), with_database(server, names[1]))
    migrate(dbs)
    _created.setdefault(server, []).extend(names)
    return dbs


_created: dict[str, list[str]] = {}


def _drop(server: str) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        for name in _created.pop(server, []):
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
