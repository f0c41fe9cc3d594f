"""Buffered sink destinations and their strict row models.

A destination is declared here at deploy time (name, schema version, row model, table, key);
its table comes from a data migration. Rows travel as JSONL and are parsed with the row
model in strict JSON mode: unknown fields, wrong types, naive timestamps, non-object payloads,
NUL characters and non-finite numbers are refused, with errors naming the row or line and the
field path, never the value. Parsing is pure: no I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticSerializationError, to_json

from trace_core.errors import InvalidBatch

_MAX_FIELD_NAME = 64
_INT64_MAX = 2**63 - 1


class SinkRow(BaseModel):
    """Base of every row model: frozen, strict, unknown fields forbidden, text fit for Postgres."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _postgres_safe(cls, value: Any) -> Any:
        problem = _unsafe(value, "")
        if problem:
            raise ValueError(problem)
        return value


def _unsafe(value: Any, path: str) -> str | None:
    """Why Postgres text/jsonb would refuse ``value`` (NUL, NaN/Infinity), or None."""
    if isinstance(value, str):
        return (
            f"contains a NUL character{' at ' + path if path else ''}" if "\x00" in value else None
        )
    if isinstance(value, float):
        return (
            f"non-finite number{' at ' + path if path else ''}"
            if not math.isfinite(value)
            else None
        )
    if isinstance(value, Mapping):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if "\x00" in str(k):
                return f"key contains a NUL character{' under ' + path if path else ''}"
            found = _unsafe(v, sub)
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = _unsafe(v, f"{path}[{i}]")
            if found:
                return found
    return None


class AlertEventRow(SinkRow):
    """One alert event (destination ``alert_events``).

    ``dedupe_key`` derives from domain identity (alert, chain, block/tx), never from the
    attempt or the clock, so a retried evaluation yields the same keys.
    """

    dedupe_key: str = Field(min_length=1, max_length=512)
    alert_name: str = Field(min_length=1, max_length=200)
    severity: Literal["info", "warning", "critical"]
    chain_id: int = Field(gt=0, le=_INT64_MAX)
    block_number: int = Field(ge=0, le=_INT64_MAX)
    block_hash: str | None = Field(default=None, max_length=256)
    tx_hash: str | None = Field(default=None, max_length=256)
    event_time: AwareDatetime
    payload: dict[str, Any]


@dataclass(frozen=True)
class Destination:
    """A buffered dataset: rows of ``row_model`` upserted into ``table`` keyed by ``key``."""

    name: str
    schema_version: int
    row_model: type[SinkRow]
    table: str  # "schema.table" in the data database
    key: str
    # (module, query) run with ``keys`` in the write transaction after the insert, e.g. to
    # mark re-produced alert events fresh again (trace_core.integrity.invalidations)
    after_write: tuple[str, str] | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.row_model.model_fields)

    @property
    def schema_table(self) -> tuple[str, str]:
        schema, _, table = self.table.partition(".")
        return schema, table


DESTINATIONS: dict[str, Destination] = {
    "alert_events": Destination(
        name="alert_events",
        schema_version=1,
        row_model=AlertEventRow,
        table="data.alert_events",
        key="dedupe_key",
        after_write=("integrity", "revalidate_alert_events"),
    ),
}


def get_destination(name: object) -> Destination:
    """The registered destination ``name``. Raises ``InvalidBatch`` when unknown."""
    dest = DESTINATIONS.get(name) if isinstance(name, str) else None
    if dest is None:
        known = ", ".join(sorted(DESTINATIONS))
        raise InvalidBatch(f"unknown destination {str(name)[:64]!r} (known: {known})")
    return dest


def parse_row(
    dest: Destination,
    text: str | bytes,
    *,
    key: str | None = None,
    line: int | None = None,
    row: int | None = None,
) -> SinkRow:
    """Parse one JSON object strictly. Raises ``InvalidBatch`` naming line/row and field."""
    try:
        return dest.row_model.model_validate_json(text)
    except ValidationError as exc:
        raise _invalid(dest, exc, key=key, line=line, row=row) from None


def validate_row(dest: Destination, value: Mapping[str, Any] | SinkRow, *, row: int) -> SinkRow:
    """Validate a Python row exactly as the sink will parse its JSON form.

    The row is serialised with pydantic's JSON rules (datetimes as RFC3339, UUIDs as strings)
    and parsed back strictly, so what passes here also passes at the sink. Raises
    ``InvalidBatch`` naming the row index and field.
    """
    if isinstance(value, SinkRow):
        value = value.model_dump(mode="python")
    if not isinstance(value, Mapping):
        raise InvalidBatch(
            f"row must be a mapping, not {type(value).__name__}", destination=dest.name, row=row
        )
    try:
        text = to_json(dict(value))
    except PydanticSerializationError as exc:
        raise InvalidBatch(
            f"row is not JSON-serialisable: {exc}", destination=dest.name, row=row
        ) from None
    return parse_row(dest, text, row=row)


def dump_row(model: SinkRow) -> bytes:
    """The canonical JSONL line of a parsed row (no trailing newline)."""
    return model.model_dump_json().encode()


def parse_jsonl(dest: Destination, data: bytes, *, key: str) -> list[SinkRow]:
    """Parse a whole JSONL object: UTF-8, one strict row per non-blank line.

    Everything is parsed before the caller writes anything. Raises ``InvalidBatch`` naming
    the object key, line number and field path of the first bad line.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InvalidBatch(
            f"not valid UTF-8 (byte {exc.start})", destination=dest.name, key=key, line=line
        ) from None
    rows: list[SinkRow] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        rows.append(parse_row(dest, raw, key=key, line=number))
    return rows


def _invalid(
    dest: Destination, exc: ValidationError, *, key: str | None, line: int | None, row: int | None
) -> InvalidBatch:
    errors = exc.errors(include_input=False, include_url=False)
    first = errors[0]
    field = ".".join(str(p)[:_MAX_FIELD_NAME] for p in first["loc"]) or None
    message = str(first["msg"])
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return InvalidBatch(message, destination=dest.name, key=key, line=line, row=row, field=field)
