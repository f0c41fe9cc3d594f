"""What user queries resolve from the registry, cached per org and registry generation.

Resolving a user query's relations took two statements in a tenant-scoped transaction (four
round trips) plus building every ``VersionRecord`` per query. ``state.orgs.registry_generation``
(migration 0085) changes in the same transaction as any change to an org's datasets, versions,
chain_sync jobs or streams, so one indexed read of it per query tells whether the org's
last resolution still holds. Keyed by (org, job, hot): one org's entry is never served to
another, whatever their grants (grants are applied after the cache, per query).
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from typing import Any

from psycopg import Connection

from trace_core.db.queries import q
from trace_core.query.attach import Versions

Key = tuple[uuid.UUID, str | None, bool]  # org, job, hot tables served
Entry = tuple[tuple[int, ...], Versions]  # followed chains, registered relations


def registry_generation(conn: Connection[Any], org_id: uuid.UUID) -> int | None:
    """The org's registry generation (None: no org row, nothing may be cached)."""
    row = conn.execute(q("query", "registry_generation"), {"org_id": org_id}).fetchone()
    return None if row is None else int(row[0])


class RegistryCache:
    """Bounded, thread-safe; an entry is served only at the generation it was read at."""

    def __init__(self, max_entries: int = 256) -> None:
        self._entries: OrderedDict[Key, tuple[int, Entry]] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def get(self, key: Key, generation: int) -> Entry | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None or found[0] != generation:
                return None
            self._entries.move_to_end(key)
            return found[1]

    def latest(self, key: Key) -> tuple[int, Entry] | None:
        """The key's entry and the generation it was read at, whatever the generation is
        now: for a caller that checks that generation before it answers (``QueryService``)."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: Key, generation: int, entry: Entry) -> None:
        """Remember ``entry``, read at or after ``generation`` (read the generation first)."""
        with self._lock:
            held = self._entries.get(key)
            if held is not None and held[0] > generation:
                return  # a newer resolution is already here
            self._entries[key] = (generation, entry)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
