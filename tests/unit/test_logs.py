"""Structured log lines carry the task and attempt ids the library attaches with ``extra``."""

from __future__ import annotations

import json
import logging

import pytest

from trace_core.logs import JsonFormatter, KeyValueFormatter, configure_logging


def _record() -> logging.LogRecord:
    logger = logging.getLogger("trace_core.engine.execute")
    return logger.makeRecord(
        "trace_core.engine.execute", logging.INFO, __file__, 1, "task claimed", (), None,
        extra={"task_id": "8b7c", "attempt": 2, "operator": "cryo_ingest"},
    )  # fmt: skip


def test_text_lines_end_with_the_extra_fields() -> None:
    line = KeyValueFormatter().format(_record())
    assert line.endswith(
        "INFO trace_core.engine.execute: task claimed task_id=8b7c attempt=2 operator=cryo_ingest"
    )


def test_json_lines_are_one_object_with_the_fields() -> None:
    out = json.loads(JsonFormatter().format(_record()))
    assert (out["message"], out["task_id"], out["attempt"], out["level"]) == (
        "task claimed",
        "8b7c",
        2,
        "INFO",
    )


def test_configure_logging_replaces_handlers(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(logging.INFO, "json")
        logging.getLogger("trace_core.x").info("hello", extra={"task_id": "t1"})
        assert json.loads(capsys.readouterr().err.strip().splitlines()[-1])["task_id"] == "t1"
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
