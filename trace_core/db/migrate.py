"""Forward-only numbered SQL migrations for the state and data databases (yoyo-migrations).

Files live in ``trace_core/sql/migrations/{state,data}/NNNN_name.sql`` and are never edited
once landed. yoyo records what it applied and holds a lock table, so two ``migrate`` runs at
once are safe.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from trace_core.db.connection import Databases, connect, redact_url
from trace_core.errors import DatabaseUnreachable

log = logging.getLogger(__name__)

MIGRATIONS_ROOT = Path(__file__).resolve().parents[1] / "sql" / "migrations"
_READ_LOCK = threading.Lock()


def _yoyo_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url[len("postgres://") :]
    raise DatabaseUnreachable(f"unsupported database url for migrations: {redact_url(url)}")


def _all_applied(url: str, which: str) -> bool:
    """Whether yoyo has recorded every migration file of ``which``: the common case of every
    command and service start, answered by one query instead of parsing each file (~1 s)."""
    import psycopg

    files = {p.stem for p in (MIGRATIONS_ROOT / which).glob("*.sql")}
    try:
        with connect(url, autocommit=True) as conn:
            applied = {r[0] for r in conn.execute("SELECT migration_id FROM _yoyo_migration")}
    except psycopg.Error:  # no yoyo tables yet, or no right to read them: let yoyo decide
        return False
    return files <= applied


def migrate_database(url: str, which: str, *, lock_timeout: float = 60.0) -> list[str]:
    """Apply pending migrations of ``which`` ('state' or 'data'); return the ids applied."""
    if _all_applied(url, which):
        return []  # before importing yoyo (and sqlparse): the common case stays cheap
    from yoyo import get_backend, read_migrations
    from yoyo.exceptions import LockTimeout

    # yoyo resolves `-- depends:` through one process-wide registry of migration ids, filled
    # as files are read: two threads reading at once could resolve each other's objects and
    # lose the ordering a dependency on a later-numbered file asks for (0034 -> 0060). Read and
    # resolve under a lock, so each call's list refers to its own migrations.
    with _READ_LOCK:
        migrations = read_migrations(str(MIGRATIONS_ROOT / which))
        for migration in migrations:
            migration.load()
    try:
        backend = get_backend(_yoyo_url(url))
    except Exception as exc:  # yoyo wraps driver errors in its own types
        raise DatabaseUnreachable(f"cannot connect to {redact_url(url)} to migrate: {exc}") from exc
    deadline = time.monotonic() + lock_timeout
    try:
        while True:
            try:
                with backend.lock(timeout=lock_timeout):
                    pending = backend.to_apply(migrations)
                    backend.apply_migrations(pending)
                    applied = [m.id for m in pending]
                    break
            except LockTimeout:
                if time.monotonic() > deadline:
                    raise
    finally:
        backend.connection.close()
    if applied:
        log.info("applied migrations", extra={"database": which, "migrations": applied})
    return applied


def migrate(dbs: Databases) -> dict[str, list[str]]:
    """Migrate both databases; idempotent."""
    return {
        "state": migrate_database(dbs.state_url, "state"),
        "data": migrate_database(dbs.data_url, "data"),
    }
