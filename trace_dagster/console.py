"""The console logger of every Trace job: one line per record, an error as its kind and message.

Dagster's default console logger appends the whole error (Dagster's own framework frames
included) to a failure event's line, so one failed attempt of a range printed dozens of lines
in ``trace-lite run`` and ``dagster dev``. This logger prints what the default prints before the
error, then `` (Kind: message)`` of the error's root cause. The full error, stack included,
stays in the run's event log (the UI shows it).
"""

# No `from __future__ import annotations` here: Dagster resolves logger annotations at runtime.
import logging
import sys
from typing import Any

from dagster import Field, InitLoggerContext, LoggerDefinition, logger

FORMAT = "%(asctime)s - dagster - %(levelname)s - %(message)s"


def error_line(error: Any) -> str:
    """``Kind: message`` of the innermost cause of a Dagster ``SerializableErrorInfo``."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    kind = str(getattr(error, "cls_name", None) or "Error")
    text = str(getattr(error, "message", "") or "").strip()
    first = text.splitlines()[0] if text else ""
    # format_exception_only writes "module.Kind: message"; keep the message
    head, sep, rest = first.partition(": ")
    if sep and head.rsplit(".", 1)[-1] == kind:
        first = rest
    return f"{kind}: {first}" if first else kind


class OneLineFormatter(logging.Formatter):
    """Dagster's line for a record, with an event's error folded into one line."""

    def __init__(self) -> None:
        super().__init__(FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None)
        event = meta.get("dagster_event") if isinstance(meta, dict) else None
        error = getattr(getattr(event, "event_specific_data", None), "error", None)
        if error is None:
            return super().format(record)
        head = record.getMessage().split("\n\n", 1)[0]  # Dagster appends "\n\n<error>"
        one = logging.makeLogRecord({**vars(record), "msg": f"{head} ({error_line(error)})"})
        one.args = None
        return super().format(one)


@logger(
    config_schema={
        "log_level": Field(str, is_required=False, default_value="DEBUG"),
        "name": Field(str, is_required=False, default_value="dagster"),
    },
    description="Dagster's console lines, an error as one line (kind: message) instead of a trace",
)
def one_line_console_logger(init_context: InitLoggerContext) -> logging.Logger:
    level = logging.getLevelName(str(init_context.logger_config["log_level"]).upper())
    out = logging.Logger(str(init_context.logger_config["name"]), level=level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter())
    out.addHandler(handler)
    return out


# What build_definitions passes as every job's default loggers.
LOGGERS: dict[str, LoggerDefinition] = {"console": one_line_console_logger}


def with_console(run_config: dict[str, Any]) -> dict[str, Any]:
    """``run_config`` that turns the ``console`` logger on: Dagster instantiates a job's loggers
    only when the run config names them (otherwise it uses its default console logger)."""
    return {**run_config, "loggers": {"console": {"config": {}}}}
