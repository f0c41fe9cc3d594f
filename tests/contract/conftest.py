"""Fixtures shared by the contract suites."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import clone_databases, drop_databases
from trace_core.db.connection import Databases


@pytest.fixture(scope="module")
def queue_state_url(pg_server_url: str, template_dbs: Databases) -> Iterator[str]:
    """One migrated state database per module; harnesses truncate the queue tables."""
    dbs = clone_databases(pg_server_url)
    yield dbs.state_url
    drop_databases(pg_server_url, dbs)
