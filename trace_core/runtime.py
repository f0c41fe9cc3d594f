"""The wiring of one Trace process: settings plus lazily built adapters.

Constructing a ``Runtime`` has no side effects; databases, queue driver and object store are
created on first use and closed by ``close()``. Dagster resources and the CLI each build one.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg

from trace_core.db.connection import Databases, connect, resolve_databases, system_session
from trace_core.db.errors import db_errors
from trace_core.settings import Settings
from trace_core.tasks.retry import RetryPolicy

if TYPE_CHECKING:
    from trace_core.db.reuse import Reused
    from trace_core.queue.base import QueueDriver
    from trace_core.storage.base import ObjectStore


class Runtime:
    """``tenant``: every connection runs as ``trace_tenant`` (row-level security shows the
    settings' org only): the CLI with ``--org``. Otherwise connections are the system's, as
    ``settings.db_system_role`` (``trace_system``: owns nothing, bypasses row-level security),
    stamping new tenant rows with the settings' org."""

    def __init__(self, settings: Settings, dbs: Databases | None = None, *, tenant: bool = False):
        self.settings = settings
        self._dbs = dbs
        self.tenant = tenant

    @property
    def _session(self) -> dict[str, str | None]:
        if self.tenant:
            return {"org_id": self.settings.org_id, "role": "trace_tenant"}
        return system_session(self.settings)

    @functools.cached_property
    def dbs(self) -> Databases:
        return self._dbs or resolve_databases(self.settings)

    @functools.cached_property
    def queue(self) -> QueueDriver:
        from trace_core.queue.factory import make_queue_driver

        return make_queue_driver(self.settings, self.dbs.state_url)

    @functools.cached_property
    def store(self) -> ObjectStore:
        from trace_core.storage.factory import make_object_store

        return make_object_store(self.settings)

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.settings.retry_base_seconds, self.settings.retry_max_seconds)

    @contextlib.contextmanager
    def state(self) -> Iterator[psycopg.Connection[Any]]:
        """A state-database connection (autocommit; use ``conn.transaction()``). A driver error
        that escapes the block leaves as a ``DatabaseError``/``DatabaseUnreachable``."""
        with (
            db_errors("state database"),
            connect(self.dbs.state_url, autocommit=True, **self._session) as conn,
        ):
            yield conn

    def reused_state(self) -> Reused:
        """State connections kept for reuse (a worker run's claims and commits); the caller
        closes it. Only transaction-scoped state may be used on them (``db.reuse``)."""
        from trace_core.db.reuse import Reused

        return Reused(lambda: connect(self.dbs.state_url, autocommit=True, **self._session))

    @contextlib.contextmanager
    def data(self) -> Iterator[psycopg.Connection[Any]]:
        """A data-database connection (autocommit), driver errors translated like ``state``."""
        with (
            db_errors("data database"),
            connect(self.dbs.data_url, autocommit=True, **self._session) as conn,
        ):
            yield conn

    def close(self) -> None:
        if "queue" in self.__dict__:
            self.queue.close()
