"""``trace-lite udf invoke`` on the real sandbox: JSON on stdout and exit 0, or one clear line
on stderr naming the cause (then the UDF's own traceback), never a traceback of Trace's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from trace_core.cli.main import cli


def _run(
    tmp_path: Path, source: str, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    path = tmp_path / "fn.py"
    path.write_text(source)
    res = CliRunner().invoke(cli, ["udf", "invoke", "--file", str(path), *args], env=env)
    return res.exit_code, res.stdout, res.stderr


def test_prints_the_value_as_json(tmp_path: Path) -> None:
    code, out, err = _run(tmp_path, "def main(x):\n    return {'double': x * 2}\n", "--input", "21")
    assert (code, json.loads(out)) == (0, {"double": 42})
    code, out, _ = _run(
        tmp_path, "def main(x):\n    return x\ndef alt(x):\n    return 'alt'\n", "--entry", "alt"
    )
    assert (code, json.loads(out)) == (0, "alt")
    code, out, _ = _run(tmp_path, "def main(x):\n    return x\n")  # input defaults to null
    assert (code, json.loads(out)) == (0, None)


@pytest.mark.parametrize(
    "source,args,cause",
    [
        ("def main(:\n", [], "udf syntax: SyntaxError"),
        ("x = 1\n", [], "udf missing_entry"),
        ("def main(x):\n    while True:\n        pass\n", ["--wall-seconds", "1"], "udf wall_time"),
        ("def main(x):\n    return bytearray(1 << 30)\n", [], "udf memory"),
        ("def main(x):\n    return {1}\n", [], "udf not_serializable"),
        ("import os\ndef main(x):\n    os.fork()\n", [], "udf sandbox_violation"),
    ],
)
def test_failures_exit_non_zero_with_one_line_naming_the_cause(
    tmp_path: Path, source: str, args: list[str], cause: str
) -> None:
    code, out, err = _run(tmp_path, source, *args)
    assert code == 1 and out == ""
    assert err.splitlines()[0].startswith(f"error: {cause}"), err
    assert "trace_core" not in err


def test_a_raising_function_shows_only_its_own_traceback(tmp_path: Path) -> None:
    src = "def helper(x):\n    return 1 / x\n\ndef main(x):\n    return helper(x)\n"
    code, out, err = _run(tmp_path, src, "--input", "0")
    lines = err.splitlines()
    assert code == 1 and out == ""
    assert lines[0] == "error: udf raised: ZeroDivisionError: division by zero (fn.py line 2)"
    assert lines[1] == "Traceback (most recent call last):"
    assert 'File "fn.py", line 5, in main' in err and 'File "fn.py", line 2, in helper' in err
    assert "trace_core" not in err and "worker.py" not in err


def test_bad_arguments_and_a_missing_sandbox(tmp_path: Path) -> None:
    code, _, err = _run(tmp_path, "def main(x):\n    return x\n", "--input", "{nope")
    assert code == 2 and err.startswith("error: --input is not JSON")
    res = CliRunner().invoke(cli, ["udf", "invoke", "--file", str(tmp_path / "absent.py")])
    assert res.exit_code == 2 and "cannot read" in res.stderr
    code, _, err = _run(
        tmp_path,
        "def main(x):\n    return x\n",
        env={"TRACE_UDF_BWRAP_PATH": str(tmp_path / "nope")},
    )
    assert (
        code == 3 and err.startswith("error: sandbox unavailable:") and len(err.splitlines()) == 1
    )
