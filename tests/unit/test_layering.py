"""One-way layering: trace_core never imports dagster or trace_dagster."""

from __future__ import annotations

import ast
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


def test_trace_core_is_framework_free() -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & {"dagster", "trace_dagster"})
        for p in (ROOT / "trace_core").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_layering_check_sees_real_imports(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import dagster\nfrom trace_dagster.jobs import trace_worker\n")
    assert _imports(bad) == {"dagster", "trace_dagster"}
