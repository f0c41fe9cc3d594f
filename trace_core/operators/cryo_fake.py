"""cryo_ingest's fake mode (``TRACE_CRYO_MODE=fake``): deterministic Parquet for a range,
named, chunked and typed as real cryo writes it, for users without an RPC. Not used by the
tests that prove ingestion."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trace_core.datasets.cryo_schemas import CRYO_COLUMNS, arrow_schema


def _chunks(start: int, end: int, size: int) -> list[tuple[int, int]]:
    """cryo's chunking: ``[start, end)`` cut into ``size``-block chunks from ``start``."""
    return [(a, min(a + size, end)) for a in range(start, end, size)]


def extract_fake(
    *,
    chain_id: int,
    cryo_dataset_name: str,
    range_start: int,
    range_end: int,
    chunk_size: int,
    out_dir: Path,
) -> None:
    """Write deterministic Parquet for ``[range_start, range_end)``, named and chunked as cryo
    names its files.

    blocks/transactions/logs use cryo 0.3.2's exact schemas; other datasets get a stub with
    ``block_number`` and ``chain_id``.
    """
    for a, b in _chunks(range_start, range_end, chunk_size):
        table = _fake_table(cryo_dataset_name, chain_id, a, b)
        name = f"network_{chain_id}__{cryo_dataset_name}__{a:08d}_to_{b - 1:08d}.parquet"
        pq.write_table(table, out_dir / name, compression="lz4")


def _h(*parts: object) -> bytes:
    return hashlib.sha256(":".join(str(x) for x in parts).encode()).digest()


# datasets the hot path does not know get a stub with the two columns every cryo dataset has
STUB_SCHEMA = pa.schema([("block_number", pa.uint32()), ("chain_id", pa.uint64())])


def _fake_txs(chain_id: int, n: int) -> int:
    return _h("fake-block", chain_id, n)[0] % 4


def _fake_table(dataset: str, chain_id: int, start: int, end: int) -> pa.Table:
    rows: list[dict[str, Any]] = []
    for n in range(start, end):
        ntx = _fake_txs(chain_id, n)
        if dataset == "blocks":
            rows.append(
                {"block_hash": _h("fake-block", chain_id, n), "author": b"\0" * 20, "block_number": n,
                 "gas_used": 21_000 * ntx, "extra_data": b"", "timestamp": 1_700_000_000 + 2 * n,
                 "base_fee_per_gas": 1_000_000_000, "chain_id": chain_id}
            )  # fmt: skip
        elif dataset in ("transactions", "logs"):
            log_index = 0
            for i in range(ntx):
                tx_hash = _h("fake-tx", chain_id, n, i)
                if dataset == "transactions":
                    value = int.from_bytes(tx_hash[:6], "big")
                    rows.append(
                        {"block_number": n, "transaction_index": i, "transaction_hash": tx_hash,
                         "nonce": i, "from_address": tx_hash[:20], "to_address": tx_hash[12:],
                         "value_binary": value.to_bytes(32, "big"), "value_string": str(value),
                         "value_f64": float(value), "input": b"", "gas_limit": 21_000,
                         "gas_used": 21_000, "gas_price": 1_000_000_000, "transaction_type": 2,
                         "max_priority_fee_per_gas": 1_000_000_000, "max_fee_per_gas": 2_000_000_000,
                         "success": True, "n_input_bytes": 0, "n_input_zero_bytes": 0,
                         "n_input_nonzero_bytes": 0, "chain_id": chain_id}
                    )  # fmt: skip
                    continue
                for _ in range(tx_hash[0] % 3):
                    rows.append(
                        {"block_number": n, "transaction_index": i, "log_index": log_index,
                         "transaction_hash": tx_hash, "address": tx_hash[:20],
                         "topic0": _h("fake-topic", log_index), "topic1": tx_hash, "topic2": None,
                         "topic3": None, "data": tx_hash, "chain_id": chain_id}
                    )  # fmt: skip
                    log_index += 1
        else:
            rows.append({"block_number": n, "chain_id": chain_id})
    schema = arrow_schema(dataset) if dataset in CRYO_COLUMNS else STUB_SCHEMA
    return pa.Table.from_pylist(rows, schema=schema)
