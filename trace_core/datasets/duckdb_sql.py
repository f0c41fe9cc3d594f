"""DuckDB SQL text for reading committed Parquet: quoting, and the one way a partly replaced
version is read (``registry.visible_parts``). Shared by the Query Service's sandbox and the
hot path's federation helper, so both read exactly the same rows."""

from __future__ import annotations

from collections.abc import Sequence


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def sql_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(sql_literal(item) for item in items) + "]"


def parquet_select(uris: Sequence[str], start: int | None = None, end: int | None = None) -> str:
    """``SELECT *`` over ``uris``; with bounds, only blocks ``[start, end)``."""
    select = f"SELECT * FROM read_parquet({sql_list(uris)})"
    if start is None or end is None:
        return select
    return f"{select} WHERE block_number >= {int(start)} AND block_number < {int(end)}"
