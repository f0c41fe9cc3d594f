"""One-way layering: trace_core never imports dagster, trace_dagster or trace_lite;
trace_dagster is a thin shell (no SQL, no database or AWS driver) and never imports
trace_lite."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


# A string constant that reads as SQL, in any case: a statement keyword opening it with the
# clause that makes it a statement, or a schema-qualified Trace table named in it.
SQL_TEXT = re.compile(
    r"^\s*(SELECT\s+(\d|\*)|SELECT\b.*\bFROM\s+\w|INSERT\s+INTO\s+\w|UPDATE\s+[\w.]+\s+SET\b"
    r"|DELETE\s+FROM\s+\w|WITH\s+\w+\s+AS\s*\(|(CREATE|ALTER|DROP)\s+(TABLE|INDEX|VIEW|SCHEMA)\b)"
    r"|\b(FROM|JOIN|INTO)\s+(state|data)\.\w",
    re.IGNORECASE | re.DOTALL,
)
SHELL_FORBIDDEN = {"psycopg", "psycopg_pool", "boto3", "botocore", "duckdb", "trace_lite"}


def _sql_strings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        node.value[:60]
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and SQL_TEXT.search(node.value)
    ]


def _offenders(package: str, forbidden: set[str]) -> dict[str, list[str]]:
    found = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & forbidden)
        for p in (ROOT / package).rglob("*.py")
    }
    return {k: v for k, v in found.items() if v}


def test_trace_core_is_framework_free() -> None:
    assert (
        _offenders("trace_core", {"dagster", "dagster_duckdb", "trace_dagster", "trace_lite"}) == {}
    )


def test_trace_dagster_reaches_no_driver_and_not_the_local_stack() -> None:
    assert _offenders("trace_dagster", SHELL_FORBIDDEN) == {}


def test_trace_dagster_holds_no_sql() -> None:
    found = {
        str(p.relative_to(ROOT)): _sql_strings(p) for p in (ROOT / "trace_dagster").rglob("*.py")
    }
    assert {k: v for k, v in found.items() if v} == {}


def test_the_sql_check_sees_sql(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        'A = "SELECT 1"\nB = """\n  select count(*) FROM state.tasks"""\n'
        'C = "UPDATE state.tasks SET x = 1"\nD = "select a stream"\nE = "from the data lake"\n'
        'F = "select task_id from tasks"\nG = "update jobs set paused = true"\n'
        'H = "delete from outbox where 1 = 1"\nI = "with t as (select 1) select * from t"\n'
        'J = "Select the stream to update"\nK = "insert into t values (1)"\n'
    )
    assert len(_sql_strings(bad)) == 8


def test_layering_check_sees_real_imports(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import dagster\nfrom trace_dagster.jobs import trace_worker\n")
    assert _imports(bad) == {"dagster", "trace_dagster"}
