"""After ``trace-lite apply`` the UI knows the new job's assets: ``trace_lite.reload`` asks the
webserver, through Dagster's GraphQL API, to reload its code locations. The webserver is
Dagster's own ASGI app over ``workspace.yaml`` (its code server a real subprocess, as under
``dagster dev``), served by uvicorn on a free local port in a thread of this process."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from dagster import instance_for_test
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster_webserver.app import create_app_from_workspace_process_context
from starlette.applications import Starlette

from trace_core.chain_sync import store
from trace_core.chain_sync.yamlload import load_job_file
from trace_core.runtime import Runtime
from trace_core.settings import REPO_ROOT
from trace_lite.reload import HINT, reload_definitions
from trace_lite.stack import STACK_FILE, Service, StackRecord

JOB = """kind: chain_sync
name: late
chain_id: 31337
mode: {kind: fixed_target, from_block: 0, to_block: 100}
streams:
  blocks: {cryo_dataset_name: blocks, rpc_pool: late, chunk_size: 50, max_inflight: 1}
"""
ASSET = """
query { assetNodeOrError(assetKey: {path: ["chain_sync", "late", "blocks"]}) {
  __typename ... on AssetNode { isMaterializable isPartitioned }
} }
"""


@contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) until the block ends; yields its URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    (sock,) = server.servers[0].sockets
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _asset(url: str) -> dict[str, object]:
    response = httpx.post(f"{url}/graphql", json={"query": ASSET}, timeout=60)
    response.raise_for_status()
    return dict(response.json()["data"]["assetNodeOrError"])


def test_apply_reloads_the_webserver_so_the_new_job_is_materializable(
    trace_env: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no stack running: apply says how to reload by hand
    assert reload_definitions(trace_env.settings) == [f"no local Dagster webserver running; {HINT}"]

    with (
        instance_for_test() as instance,
        WorkspaceProcessContext(
            instance, WorkspaceFileTarget(paths=[str(REPO_ROOT / "workspace.yaml")])
        ) as process,
        serving(create_app_from_workspace_process_context(process)) as url,
    ):
        assert _asset(url)["__typename"] == "AssetNotFoundError"  # not applied yet
        job_file = tmp_path / "late.yaml"
        job_file.write_text(JOB)
        spec, raw = load_job_file(job_file)
        with trace_env.state() as conn:
            store.apply_job(conn, trace_env.settings.org_id, spec, raw, str(job_file))
        # applied, but the loaded definitions predate it
        assert _asset(url)["__typename"] == "AssetNotFoundError"

        # what `up`/`demo` record; apply finds the webserver there and reloads it
        StackRecord([Service("dagster", os.getpid(), url, "")]).save(
            trace_env.settings.home / STACK_FILE
        )
        assert reload_definitions(trace_env.settings) == [
            f"reloaded Dagster definitions of code location trace_dagster.definitions:defs at {url}"
        ]
        assert _asset(url) == {
            "__typename": "AssetNode",
            "isMaterializable": True,
            "isPartitioned": True,
        }
