"""Transform YAML and Python-alert YAML validation: every problem names file:line: field."""

from __future__ import annotations

from pathlib import Path

import pytest

from trace_core.alerts.spec import parse_alert
from trace_core.errors import ConfigError
from trace_core.transforms.spec import is_transform_document, load_transform_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

GOOD = """kind: transform
name: vol
job: demo
inputs: [logs]
code: {python: vol.py}
output: vol_out
trigger: {on_input: true, cron: "*/5 * * * *", webhook: true}
"""
UDF = "import pyarrow as pa\n\ndef main(tables):\n    return tables['logs']\n"


def _load(tmp_path: Path, yaml_text: str, udf: str | None = UDF) -> object:
    if udf is not None:
        (tmp_path / "vol.py").write_text(udf)
    path = tmp_path / "t.yaml"
    path.write_text(yaml_text)
    return load_transform_file(path)


def test_examples_load() -> None:
    loaded = load_transform_file(EXAMPLES / "transforms" / "erc20_volume.yaml")
    assert loaded.spec.output == "erc20_volume" and loaded.python_source
    assert is_transform_document(loaded.raw)
    alert = parse_alert(
        (EXAMPLES / "udf_alerts" / "busy_token.yaml").read_bytes(),
        source="busy_token.yaml",
        base=EXAMPLES / "udf_alerts",
    )
    assert alert.udf_source and "def main" in alert.udf_source
    assert alert.spec.rows_sql == 'SELECT * FROM "erc20_volume"'


def test_good_file(tmp_path: Path) -> None:
    loaded = _load(tmp_path, GOOD)
    assert loaded.spec.trigger.cron == "*/5 * * * *"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("yaml_text", "udf", "where", "words"),
    [
        (GOOD.replace("output: vol_out", "output: logs"), UDF, ":6: output", "differ"),
        (GOOD.replace("output: vol_out", "output: analytics_x"), UDF, ":6: output", "analytics_"),
        (GOOD.replace('cron: "*/5 * * * *"', 'cron: "61 * * * *"'), UDF, ":7: trigger.cron", "61"),
        (GOOD.replace('cron: "*/5 * * * *"', 'cron: "every day"'), UDF, ":7: trigger.cron", "5 fields"),
        (GOOD.replace("{python: vol.py}", "{python: vol.py, sql: 'SELECT 1'}"), UDF, ":5: code", "exactly one"),
        (GOOD.replace("{python: vol.py}", "{sql: 'SELECT * FROM blocks'}"), None, ":5: code", "SQL gate"),
        (GOOD, "def main(tables:\n    pass\n", ":5: code.python", "vol.py:1"),
        (GOOD, "def helper(t):\n    return t\n", ":5: code.python", "no top-level function main"),
        (GOOD.replace("vol.py", "missing.py"), None, ":5: code.python", "cannot read"),
        (GOOD + "retries: 3\n", UDF, ":8: retries", "unknown field"),
        (GOOD.replace("inputs: [logs]", "inputs: [logs, logs]"), UDF, ":4: inputs", "distinct"),
    ],
)  # fmt: skip
def test_bad_files_name_file_line_and_field(
    tmp_path: Path, yaml_text: str, udf: str | None, where: str, words: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, yaml_text, udf)
    text = str(err.value)
    assert f"t.yaml{where}" in text and words in text, text


ALERT = """kind: alert
name: py
job: demo
reads: [{reads}]
udf: a.py
trigger: {{on_commit: true}}
dedupe_key: "py:{{token}}"
severity: info
channels: [{{log: {{}}}}]
"""


def test_python_alert_validation(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("def main(rows):\n    return []\n")
    ok = parse_alert(ALERT.format(reads="x"), source="a.yaml", base=tmp_path)
    assert ok.spec.condition is None and ok.udf_source is not None
    with pytest.raises(ConfigError, match=r"a\.yaml:5: udf: .*needs a condition"):
        parse_alert(ALERT.format(reads="x, y"), source="a.yaml", base=tmp_path)
    with pytest.raises(ConfigError, match=r"a\.yaml:10: udf_sha256: .*set by apply"):
        parse_alert(
            ALERT.format(reads="x") + f"udf_sha256: {'0' * 64}\n", source="a.yaml", base=tmp_path
        )
    (tmp_path / "a.py").write_text("def main(rows)\n")
    with pytest.raises(ConfigError, match=r"a\.yaml:5: udf: a\.py:1"):
        parse_alert(ALERT.format(reads="x"), source="a.yaml", base=tmp_path)


def test_worker_reports_a_transform_run_on_its_output_asset() -> None:
    """What a trace_worker run logs for a committed transform run (pure: no Dagster run)."""
    import uuid

    from dagster import AssetKey

    from trace_core.engine.execute import TaskOutcome
    from trace_dagster.transforms import transform_materialization

    payload = {
        "transform_id": str(uuid.uuid4()),
        "transform_name": "vol",
        "job_name": "demo",
        "chain_id": 31337,
        "output_key": "vol_out",
        "inputs": ["logs"],
        "code_kind": "sql",
        "sql": "SELECT 1",
        "range_start": 0,
        "range_end": 500,
        "trigger": "on_input",
        "partitioned": True,
    }
    outputs = {"dataset_version": "v1", "row_count": 7}
    done = TaskOutcome(uuid.uuid4(), "succeeded", 2, "udf_transform", payload, outputs)
    sizes = {"demo": 100_000}.__getitem__  # the job's epoch_blocks
    mat = transform_materialization(done, sizes)
    assert mat is not None and mat.asset_key == AssetKey(["transform", "demo", "vol"])
    assert mat.partition == "000000000000-000000100000"  # the range's epoch
    assert mat.metadata["range"].value == "000000000000-000000000500"
    assert mat.metadata["rows"].value == 7
    manual = TaskOutcome(
        uuid.uuid4(),
        "succeeded",
        1,
        "udf_transform",
        {**payload, "trigger": "manual", "partitioned": False},
        outputs,
    )
    assert transform_materialization(manual, sizes).partition is None  # type: ignore[union-attr]
    dead = TaskOutcome(uuid.uuid4(), "dead", 1, "udf_transform", payload, {})
    assert transform_materialization(dead, sizes) is None
    assert (
        transform_materialization(TaskOutcome(uuid.uuid4(), "succeeded", 1, "noop", {}, {}), sizes)
        is None
    )
