"""Query results: JSON rendering of inline rows and Parquet export of large results.

Inline values are JSON-safe and lossless: 64-bit unsigned, 128-bit and DECIMAL columns become
strings (JavaScript numbers would round them), BLOBs become ``0x``-prefixed hex (chain hashes
and addresses), temporal values ISO 8601 strings, non-finite floats null.

A result over the inline caps is exported as one Parquet object at
``results/{org_id}/{query_id}/result.parquet``; the response carries its key, URI and, on S3, a
presigned GET URL.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

_STRING_TYPES = ("UBIGINT", "HUGEINT", "UHUGEINT")


class ObjectWriter(Protocol):
    """The part of ``trace_core.storage.base.ObjectStore`` exports need."""

    def put_file(self, key: str, path: Path, content_type: str = ...) -> None: ...

    def duckdb_uri(self, key: str) -> str: ...

    def presign_get(self, key: str, expires_seconds: int = ...) -> str | None: ...


@dataclass(frozen=True)
class ExportInfo:
    key: str
    uri: str
    presigned_url: str | None
    row_count: int

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "uri": self.uri, "row_count": self.row_count}
        if self.presigned_url:
            out["presigned_url"] = self.presigned_url
        return out


def result_key(query_id: uuid.UUID, org_id: uuid.UUID | str | None = None) -> str:
    """Where a result goes: under its org's prefix (scoped credentials and lifecycle rules
    can name one org's results), then the query id (unguessable)."""
    org = f"{org_id}/" if org_id is not None else ""
    return f"results/{org}{query_id}/result.parquet"


def export_result(
    store: ObjectWriter,
    query_id: uuid.UUID,
    spool: Path,
    row_count: int,
    *,
    presign_seconds: int,
    org_id: uuid.UUID | str | None = None,
) -> ExportInfo:
    """Upload the spooled Parquet result. Storage errors propagate."""
    key = result_key(query_id, org_id)
    store.put_file(key, spool)
    uri = store.duckdb_uri(key)
    if "://" not in uri:
        uri = Path(uri).as_uri()
    return ExportInfo(key, uri, store.presign_get(key, presign_seconds), row_count)


def json_rows(
    batches: Sequence[pa.RecordBatch], columns: Sequence[dict[str, str]]
) -> list[list[Any]]:
    """Rows as lists of JSON-safe values, in column order."""
    as_text = [c["type"] in _STRING_TYPES or c["type"].startswith("DECIMAL") for c in columns]
    rows: list[list[Any]] = []
    for batch in batches:
        cols = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        for values in zip(*cols, strict=True):
            rows.append(
                [
                    str(v) if text and v is not None else json_value(v)
                    for v, text in zip(values, as_text, strict=True)
                ]
            )
    return rows


def json_value(value: Any) -> Any:
    """One Arrow/Python value as a JSON-safe value (see module docstring)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, pa.MonthDayNano):
        return {"months": value.months, "days": value.days, "nanos": value.nanoseconds}
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return str(value)
