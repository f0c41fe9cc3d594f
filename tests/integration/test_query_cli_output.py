"""What ``trace-lite query`` prints without ``--json``: where a large result went, and one clear
line (no traceback) when the embedded path fails unexpectedly. Real Postgres, real DuckDB in the
sandboxed worker, Parquet in the CLI's own LocalStore."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.integration.test_query_embedded import (  # noqa: F401 - fixtures
    blocks,
    no_service,
    run_cli,
    store,
)
from trace_core.datasets.registry import VersionRecord
from trace_core.storage.local import LocalStore


def test_a_large_result_prints_where_it_was_exported(
    no_service: int,  # noqa: F811
    blocks: VersionRecord,  # noqa: F811
    trace_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRACE_QUERY_INLINE_MAX_ROWS", "10")
    result = run_cli("--sql", "SELECT block_number FROM blocks ORDER BY 1")
    assert result.exit_code == 0, result.stderr
    out = " ".join(result.stdout.split())  # rich wraps long lines
    assert "100 row(s)" in out
    assert "exported" in out
    (exported,) = (trace_home / "objects" / "results").glob("*/*/result.parquet")
    assert exported.as_uri() in out.replace(" ", "")  # the location a reader can open
    assert pq.read_table(exported).num_rows == 100


def test_an_unexpected_error_in_the_embedded_path_is_one_line(
    no_service: int,  # noqa: F811
    blocks: VersionRecord,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: LocalStore, key: str) -> str:
        raise RuntimeError("disk controller on fire")

    monkeypatch.setattr(LocalStore, "duckdb_uri", broken)  # an adapter bug, not a TraceError
    result = run_cli("--sql", "SELECT count(*) FROM blocks")
    assert result.exit_code == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert "answering in process" in lines[0]
    assert lines[1:] == ["error: internal error (RuntimeError: disk controller on fire)"]
    assert "Traceback" not in result.stderr + result.stdout
