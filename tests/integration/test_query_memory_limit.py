"""The query workers' address-space limit (RLIMIT_AS) turns a query that allocates past it
into HTTP 413 ``memory_limit``, and the worker goes on serving. DuckDB's own memory_limit is
set far above it here, so only the OS limit can stop the query. Real uvicorn, a real DuckDB
worker process under the real limit, real Postgres for grants and audit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.test_query_service import (
    RecordingStore,
    audit_rows,
    blocks_table,
    post,
    publish,
    serving,
)
from trace_core.db.connection import Databases
from trace_core.query.app import create_app
from trace_core.query.client import local_user_token
from trace_core.settings import Settings
from trace_core.storage.local import LocalStore

GIB = 1024**3
# one 1.5 GiB string, built in one allocation: over the 1 GiB of headroom, far below the
# box's memory (without the limit the query would simply succeed)
HOG = "SELECT length(repeat('x', 1536 * 1024 * 1024)) AS n"


@pytest.fixture
def store(trace_home: Path) -> RecordingStore:
    return RecordingStore(LocalStore(trace_home / "objects"))


def test_a_query_past_the_address_space_limit_gets_413(
    settings: Settings, dbs: Databases, store: RecordingStore, tmp_path: Path
) -> None:
    publish(settings, store, tmp_path, blocks_table(0, 100))
    cfg = settings.model_copy(
        update={
            "query_workers": 1,
            "query_memory_limit": "64GB",  # DuckDB's own limit stays out of the way
            "query_worker_address_space_bytes": 0,  # measured below, then set
        }
    )
    token = local_user_token(cfg)
    # the worker's own mappings (Python, DuckDB, Arrow) plus 1 GiB of room
    probe = create_app(cfg, dbs, store, hot_sources=None)
    with serving(probe):
        (pid,) = probe.state.service.workers.pids()
        baseline = int(Path(f"/proc/{pid}/statm").read_text().split()[0]) * os.sysconf(
            "SC_PAGE_SIZE"
        )
    limited = cfg.model_copy(update={"query_worker_address_space_bytes": baseline + GIB})
    app = create_app(limited, dbs, store, hot_sources=None)
    with serving(app) as client:
        response = post(client, token, {"sql": HOG})
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["code"] == "memory_limit"
        assert "memory limit" in error["message"]
        # the worker survived the refused allocation and answers the next query
        ok = post(client, token, {"sql": "SELECT count(*) AS n FROM blocks"})
        assert ok.status_code == 200 and ok.json()["rows"] == [[100]]
        assert app.state.service.workers.replaced == 0
    assert [r["error_code"] for r in audit_rows(dbs)] == ["memory_limit", None]
