"""The wiring of one Trace process: settings plus lazily built adapters.

Constructing a ``Runtime`` has no side effects; databases, queue driver and object store are
created on first use and closed by ``close()``. Dagster resources and the CLI each build one.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
import uuid
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
        self._root: Runtime = self  # for_org's runtimes share the root's adapters
        self._orgs: dict[str, Runtime] = {}
        self._orgs_lock = threading.Lock()
        self._org_names: dict[str, str] = {}
        self._reused: Reused | None = None  # where ``state()`` gets connections (``reusing``)

    def for_org(self, org_id: str | uuid.UUID | None) -> Runtime:
        """This runtime acting for ``org_id``: the same databases, queue driver and object
        store, its connections stamping (and, if tenant, seeing) that org. ``None`` or this
        runtime's own org: this runtime. Cached per org; closing one closes nothing shared."""
        org = str(org_id) if org_id is not None else str(self.settings.org_id)
        if org == str(self.settings.org_id):
            return self
        root = self._root
        if org == str(root.settings.org_id):
            return root
        with root._orgs_lock:
            child = root._orgs.get(org)
            if child is None:
                settings = root.settings.model_copy(update={"org_id": org})
                child = Runtime(settings, root._dbs, tenant=root.tenant)
                child._root = root
                root._orgs[org] = child
        return child

    @property
    def home_org_id(self) -> str:
        """The deployment's org (``TRACE_ORG_ID``): the org of the runtime ``for_org`` was
        called on, whichever org this one acts for."""
        return str(self._root.settings.org_id)

    @property
    def org_names(self) -> dict[str, str]:
        """Org names by id as the engine has learnt them (an org's name never changes), shared
        by every runtime of one ``for_org`` family."""
        return self._root._org_names

    @property
    def _session(self) -> dict[str, str | None]:
        if self.tenant:
            return {"org_id": self.settings.org_id, "role": "trace_tenant"}
        return system_session(self.settings)

    @functools.cached_property
    def dbs(self) -> Databases:
        if self._root is not self:
            return self._root.dbs
        return self._dbs or resolve_databases(self.settings)

    @functools.cached_property
    def queue(self) -> QueueDriver:
        if self._root is not self:
            return self._root.queue
        from trace_core.queue.factory import make_queue_driver

        return make_queue_driver(self.settings, self.dbs.state_url)

    @functools.cached_property
    def store(self) -> ObjectStore:
        if self._root is not self:
            return self._root.store
        from trace_core.storage.factory import make_object_store

        return make_object_store(self.settings)

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.settings.retry_base_seconds, self.settings.retry_max_seconds)

    @contextlib.contextmanager
    def state(self) -> Iterator[psycopg.Connection[Any]]:
        """A state-database connection (autocommit; use ``conn.transaction()``). A driver error
        that escapes the block leaves as a ``DatabaseError``/``DatabaseUnreachable``."""
        if self._reused is not None:
            with self._reused() as conn:
                yield conn
            return
        with (
            db_errors("state database"),
            connect(self.dbs.state_url, autocommit=True, **self._session) as conn,
        ):
            yield conn

    def private_state(self, **options: Any) -> psycopg.Connection[Any]:
        """A new state connection (autocommit) that the caller owns and closes: for
        session-scoped state, such as a worker run's session advisory lock. ``options``: more
        connection keywords (``db.connection.connect``)."""
        with db_errors("state database"):
            return connect(self.dbs.state_url, autocommit=True, **options, **self._session)

    def reused_state(self, *, queue: bool = False) -> Reused:
        """State connections kept for reuse (a worker run's claims and commits); the caller
        closes it. Only transaction-scoped state may be used on them (``db.reuse``). With
        ``queue``: for statements that scan pgqueue's table (``tasks.take``), with pgqueue's
        planner options (index paths, generic plans: ``queue.pgqueue.PLANNER_OPTIONS``)."""
        from trace_core.db.reuse import Reused

        if not queue:
            return Reused(self.private_state)
        from trace_core.queue.pgqueue import PLANNER_OPTIONS

        return Reused(
            functools.partial(self.private_state, options=PLANNER_OPTIONS, prepare_threshold=0)
        )

    def reusing(self, reused: Reused) -> Runtime:
        """This runtime (same org, settings and adapters) whose ``state()`` hands out
        ``reused``'s connections (``reused_state()`` of this runtime: same org stamp) instead
        of opening one per call: a worker run's reporting reads a few rows per range. Another
        org's runtime (``for_org``) opens its own."""
        view = copy.copy(self)
        view._reused = reused
        return view

    @contextlib.contextmanager
    def data(self) -> Iterator[psycopg.Connection[Any]]:
        """A data-database connection (autocommit), driver errors translated like ``state``."""
        with (
            db_errors("data database"),
            connect(self.dbs.data_url, autocommit=True, **self._session) as conn,
        ):
            yield conn

    def close(self) -> None:
        if self._root is self and "queue" in self.__dict__:
            self.queue.close()
