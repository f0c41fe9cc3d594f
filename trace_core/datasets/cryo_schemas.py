"""cryo's column schemas: the exact Parquet columns cryo 0.3.2 writes per dataset.

The cold path (cryo_ingest, its fake mode, the query attach) and the hot path (Postgres hot
tables shaped like cryo's Parquet) both read them here.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class CryoColumn:
    """One cryo column: its Arrow type in cryo's Parquet and its DuckDB spelling."""

    name: str
    arrow: pa.DataType
    duckdb: str


def _c(name: str, arrow: pa.DataType) -> CryoColumn:
    duck = {
        pa.large_binary(): "BLOB",
        pa.uint32(): "UINTEGER",
        pa.uint64(): "UBIGINT",
        pa.large_string(): "VARCHAR",
        pa.float64(): "DOUBLE",
        pa.bool_(): "BOOLEAN",
    }[arrow]
    return CryoColumn(name, arrow, duck)


_BIN, _U32, _U64 = pa.large_binary(), pa.uint32(), pa.uint64()

# Column order and types exactly as cryo 0.3.2 writes them (read from real cryo.freeze output).
CRYO_COLUMNS: dict[str, tuple[CryoColumn, ...]] = {
    "blocks": (
        _c("block_hash", _BIN),
        _c("author", _BIN),
        _c("block_number", _U32),
        _c("gas_used", _U64),
        _c("extra_data", _BIN),
        _c("timestamp", _U32),
        _c("base_fee_per_gas", _U64),
        _c("chain_id", _U64),
    ),
    "transactions": (
        _c("block_number", _U32),
        _c("transaction_index", _U64),
        _c("transaction_hash", _BIN),
        _c("nonce", _U64),
        _c("from_address", _BIN),
        _c("to_address", _BIN),
        _c("value_binary", _BIN),
        _c("value_string", pa.large_string()),
        _c("value_f64", pa.float64()),
        _c("input", _BIN),
        _c("gas_limit", _U64),
        _c("gas_used", _U64),
        _c("gas_price", _U64),
        _c("transaction_type", _U32),
        _c("max_priority_fee_per_gas", _U64),
        _c("max_fee_per_gas", _U64),
        _c("success", pa.bool_()),
        _c("n_input_bytes", _U32),
        _c("n_input_zero_bytes", _U32),
        _c("n_input_nonzero_bytes", _U32),
        _c("chain_id", _U64),
    ),
    "logs": (
        _c("block_number", _U32),
        _c("transaction_index", _U32),
        _c("log_index", _U32),
        _c("transaction_hash", _BIN),
        _c("address", _BIN),
        _c("topic0", _BIN),
        _c("topic1", _BIN),
        _c("topic2", _BIN),
        _c("topic3", _BIN),
        _c("data", _BIN),
        _c("chain_id", _U64),
    ),
}

# Natural key (after chain_id) and sort order of each dataset, as cryo sorts its output.


def arrow_schema(dataset: str) -> pa.Schema:
    """The Arrow schema of cryo's Parquet for ``dataset`` (column order included).

    Raises ``ValueError`` for a dataset with no known schema."""
    if dataset not in CRYO_COLUMNS:
        raise ValueError(
            f"no cryo schema for dataset {dataset!r} (known: {', '.join(CRYO_COLUMNS)})"
        )
    return pa.schema([pa.field(c.name, c.arrow) for c in CRYO_COLUMNS[dataset]])
