"""Hot tables: cryo-compatible rows for blocks, transactions and logs, and their writes.

``rows_from_rpc`` turns JSON-RPC objects into rows shaped like cryo 0.3.2's default Parquet
columns (pure, no I/O). ``write_block`` stores one block's rows in one data-DB transaction,
keyed by natural keys: a re-delivered block changes nothing, and a different block at the same
height (a reorg) replaces the old rows rather than mixing with them.

Hot rows belong to an org (keys start with ``org_id``): each org's job follows a chain through
its own RPC, so two orgs following one chain keep their own rows. Every read and write here
takes the org explicitly, because the follower connects as ``trace_system`` (row-level
security bypassed).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pyarrow as pa
from psycopg import Connection, sql

from trace_core.datasets.cryo_schemas import CRYO_COLUMNS
from trace_core.datasets.cryo_schemas import arrow_schema as cryo_arrow_schema
from trace_core.db.queries import q
from trace_core.errors import RpcError

HOT_DATASETS: tuple[str, ...] = ("blocks", "transactions", "logs")
HOT_SCHEMA = "data"


SORT_KEYS: dict[str, tuple[str, ...]] = {
    "blocks": ("block_number",),
    "transactions": ("block_number", "transaction_index"),
    "logs": ("block_number", "log_index"),
}

# Hot-only bookkeeping columns written alongside the cryo columns.
_EXTRA_COLUMNS: dict[str, tuple[str, ...]] = {
    "blocks": ("parent_hash",),
    "transactions": ("block_hash",),
    "logs": ("block_hash",),
}


def hot_table(dataset: str) -> str:
    """``blocks`` -> ``hot_blocks`` (the table name in schema ``data``)."""
    check_dataset(dataset)
    return f"hot_{dataset}"


def check_dataset(dataset: str) -> None:
    """Raise ``ValueError`` for a dataset the hot path does not keep."""
    if dataset not in CRYO_COLUMNS:
        raise ValueError(f"hot path has no dataset {dataset!r} (known: {', '.join(HOT_DATASETS)})")


def hot_rows_predicate(
    min_block: int,
    gaps: Sequence[tuple[int, int]] = (),
    chain_id: int | None = None,
    org_id: str | uuid.UUID | None = None,
) -> str:
    """SQL (Postgres or DuckDB) for the hot rows a federated read takes: blocks at or beyond
    ``min_block`` (the cold boundary) or inside ``gaps`` (end-exclusive ranges below it that
    no cold version covers), of ``chain_id`` and ``org_id`` when given. Integers and a
    validated uuid only."""
    parts = [f"block_number >= {int(min_block)}"]
    parts += [f"(block_number >= {int(a)} AND block_number < {int(b)})" for a, b in gaps]
    where = "(" + " OR ".join(parts) + ")"
    if chain_id is not None:
        where = f"chain_id = {int(chain_id)} AND {where}"
    if org_id is not None:
        where = f"org_id = '{uuid.UUID(str(org_id))}' AND {where}"
    return where


def arrow_schema(dataset: str) -> pa.Schema:
    """The Arrow schema of cryo's Parquet for a hot ``dataset`` (column order included)."""
    check_dataset(dataset)
    return cryo_arrow_schema(dataset)


# --- JSON-RPC -> rows (pure) -------------------------------------------------------------


@dataclass(frozen=True)
class HotBlock:
    """One block's rows, ready for ``write_block``. Keys are column names."""

    block: dict[str, Any]
    txs: list[dict[str, Any]]
    logs: list[dict[str, Any]]

    @property
    def number(self) -> int:
        return int(self.block["block_number"])

    @property
    def hash(self) -> bytes:
        return bytes(self.block["block_hash"])

    @property
    def parent_hash(self) -> bytes:
        return bytes(self.block["parent_hash"])


def hex_bytes(value: str | None) -> bytes | None:
    """``'0xab'`` -> ``b'\\xab'``; None stays None."""
    if value is None:
        return None
    return bytes.fromhex(value[2:] if value.startswith("0x") else value)


def hex_int(value: str | int | None) -> int | None:
    if value is None:
        return None
    return value if isinstance(value, int) else int(value, 16)


def rows_from_rpc(
    chain_id: int, block: Mapping[str, Any], receipts: Sequence[Mapping[str, Any]]
) -> HotBlock:
    """Rows of one block from ``eth_getBlockByNumber(n, true)`` and its receipts.

    Raises ``RpcError`` (retryable) when the receipts do not match the block's transactions,
    so a node's partial answer is never stored as if it were complete.
    """
    txs = list(block.get("transactions") or [])
    number = _req_int(block, "number")
    block_hash = hex_bytes(block["hash"])
    if any(isinstance(t, str) for t in txs):
        raise RpcError(f"block {number}: transactions must be full objects, got hashes")
    by_hash = {str(r.get("transactionHash", "")).lower(): r for r in receipts}
    if len(receipts) != len(txs) or any(str(t["hash"]).lower() not in by_hash for t in txs):
        raise RpcError(
            f"block {number}: {len(receipts)} receipts for {len(txs)} transactions",
            block_number=number,
        )
    block_row = {
        "block_number": number,
        "block_hash": block_hash,
        "parent_hash": hex_bytes(block["parentHash"]),
        "author": hex_bytes(block.get("miner")),
        "gas_used": hex_int(block.get("gasUsed")),
        "extra_data": hex_bytes(block.get("extraData")) or b"",
        "timestamp": hex_int(block.get("timestamp")),
        "base_fee_per_gas": hex_int(block.get("baseFeePerGas")),
        "chain_id": chain_id,
    }
    tx_rows: list[dict[str, Any]] = []
    log_rows: list[dict[str, Any]] = []
    for tx in txs:
        receipt = by_hash[str(tx["hash"]).lower()]
        if (
            receipt.get("blockHash")
            and str(receipt["blockHash"]).lower() != str(block["hash"]).lower()
        ):
            raise RpcError(f"block {number}: receipt of {tx['hash']} belongs to another block")
        tx_rows.append(_tx_row(chain_id, number, block_hash, tx, receipt))
        for entry in receipt.get("logs") or []:
            if entry.get("removed"):
                raise RpcError(f"block {number}: receipt log marked removed")
            log_rows.append(_log_row(chain_id, number, block_hash, entry))
    tx_rows.sort(key=lambda r: r["transaction_index"])
    log_rows.sort(key=lambda r: r["log_index"])
    return HotBlock(block_row, tx_rows, log_rows)


def _req_int(obj: Mapping[str, Any], key: str) -> int:
    value = hex_int(obj.get(key))
    if value is None:
        raise RpcError(f"JSON-RPC object lacks {key!r}")
    return value


def _tx_row(
    chain_id: int,
    number: int,
    block_hash: bytes | None,
    tx: Mapping[str, Any],
    receipt: Mapping[str, Any],
) -> dict[str, Any]:
    value = hex_int(tx.get("value")) or 0
    data = hex_bytes(tx.get("input") or tx.get("data") or "0x") or b""
    zero = data.count(0)
    status = hex_int(receipt.get("status"))
    gas_price = hex_int(tx.get("gasPrice"))
    if gas_price is None:
        gas_price = hex_int(receipt.get("effectiveGasPrice"))
    return {
        "block_number": number,
        "transaction_index": _req_int(tx, "transactionIndex"),
        "block_hash": block_hash,
        "transaction_hash": hex_bytes(tx["hash"]),
        "nonce": hex_int(tx.get("nonce")),
        "from_address": hex_bytes(tx.get("from")),
        "to_address": hex_bytes(tx.get("to")),
        "value_binary": value.to_bytes(32, "big"),
        "value_string": str(value),
        "value_f64": float(value),
        "input": data,
        "gas_limit": hex_int(tx.get("gas")),
        "gas_used": hex_int(receipt.get("gasUsed")),
        "gas_price": gas_price,
        "transaction_type": hex_int(tx.get("type")) or 0,
        "max_priority_fee_per_gas": hex_int(tx.get("maxPriorityFeePerGas")),
        "max_fee_per_gas": hex_int(tx.get("maxFeePerGas")),
        "success": None if status is None else status == 1,
        "n_input_bytes": len(data),
        "n_input_zero_bytes": zero,
        "n_input_nonzero_bytes": len(data) - zero,
        "chain_id": chain_id,
    }


def _log_row(
    chain_id: int, number: int, block_hash: bytes | None, entry: Mapping[str, Any]
) -> dict[str, Any]:
    topics = [hex_bytes(t) for t in entry.get("topics") or []]
    topics += [None] * (4 - len(topics))
    return {
        "block_number": number,
        "log_index": _req_int(entry, "logIndex"),
        "block_hash": block_hash,
        "transaction_index": hex_int(entry.get("transactionIndex")),
        "transaction_hash": hex_bytes(entry.get("transactionHash")),
        "address": hex_bytes(entry.get("address")),
        "topic0": topics[0],
        "topic1": topics[1],
        "topic2": topics[2],
        "topic3": topics[3],
        "data": hex_bytes(entry.get("data")) or b"",
        "chain_id": chain_id,
    }


# --- writes ------------------------------------------------------------------------------


def _insert_sql(dataset: str) -> sql.Composed:
    cols = [c.name for c in CRYO_COLUMNS[dataset]] + list(_EXTRA_COLUMNS[dataset]) + ["org_id"]
    return sql.SQL("INSERT INTO {}.{} ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
        sql.Identifier(HOT_SCHEMA),
        sql.Identifier(hot_table(dataset)),
        sql.SQL(", ").join(sql.Identifier(c) for c in cols),
        sql.SQL(", ").join(sql.Placeholder(c) for c in cols),
    )


_INSERTS = {ds: _insert_sql(ds) for ds in HOT_DATASETS}


def write_block(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    chain_id: int,
    block: Mapping[str, Any],
    txs: Sequence[Mapping[str, Any]],
    logs: Sequence[Mapping[str, Any]],
) -> bool:
    """Store one block's rows in one data-DB transaction (a savepoint inside the caller's).

    Idempotent: rows are inserted with ``ON CONFLICT DO NOTHING`` on their natural keys, so a
    re-delivered block changes nothing. Rows of a *different* block at the same height (left
    by a reorg) are deleted first. Returns True when rows were inserted or replaced.
    """
    hb = HotBlock(dict(block), [dict(t) for t in txs], [dict(lg) for lg in logs])
    return write_blocks(conn, org_id, chain_id, [hb]) > 0


def write_blocks(
    conn: Connection[Any], org_id: str | uuid.UUID, chain_id: int, blocks: Sequence[HotBlock]
) -> int:
    """``write_block`` for many blocks of the org's hot rows in one transaction with a few
    statements.

    Returns the number of rows deleted (replaced) plus block rows inserted; 0 means nothing
    changed.
    """
    if not blocks:
        return 0
    org = uuid.UUID(str(org_id))
    heights = {
        "org_id": org,
        "chain_id": chain_id,
        "numbers": [hb.number for hb in blocks],
        "hashes": [hb.hash for hb in blocks],
    }
    changed = 0
    with conn.transaction(), conn.cursor() as cur:
        for dataset in HOT_DATASETS:
            cur.execute(q("hot", f"delete_other_{dataset}"), heights)
            changed += cur.rowcount
        for dataset, rows in (
            ("blocks", [hb.block for hb in blocks]),
            ("transactions", [t for hb in blocks for t in hb.txs]),
            ("logs", [lg for hb in blocks for lg in hb.logs]),
        ):
            if not rows:
                continue
            cur.executemany(
                _INSERTS[dataset],
                [{**r, "chain_id": chain_id, "org_id": org} for r in rows],
                returning=False,
            )
            if dataset == "blocks":
                changed += max(cur.rowcount, 0)
    return changed


def write_hot_block(
    conn: Connection[Any], org_id: str | uuid.UUID, chain_id: int, hb: HotBlock
) -> bool:
    """``write_block`` for a ``HotBlock``."""
    return write_blocks(conn, org_id, chain_id, [hb]) > 0


# --- reads -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredBlock:
    number: int
    hash: bytes


def _key(org_id: str | uuid.UUID, chain_id: int, **more: Any) -> dict[str, Any]:
    return {"org_id": uuid.UUID(str(org_id)), "chain_id": chain_id, **more}


def hot_tip(conn: Connection[Any], org_id: str | uuid.UUID, chain_id: int) -> StoredBlock | None:
    """The org's highest stored block of ``chain_id``, or None when it has none."""
    row = conn.execute(q("hot", "hot_tip"), _key(org_id, chain_id)).fetchone()
    return None if row is None else StoredBlock(int(row[0]), bytes(row[1]))


def hot_low(conn: Connection[Any], org_id: str | uuid.UUID, chain_id: int) -> int | None:
    """The org's lowest stored block number of ``chain_id``, or None."""
    row = conn.execute(q("hot", "hot_low"), _key(org_id, chain_id)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def stored_hashes(
    conn: Connection[Any], org_id: str | uuid.UUID, chain_id: int, start: int, end: int
) -> dict[int, bytes]:
    """``{block_number: block_hash}`` the org stores for ``[start, end)``."""
    rows = conn.execute(
        q("hot", "stored_hashes"), _key(org_id, chain_id, range_start=start, range_end=end)
    ).fetchall()
    return {int(n): bytes(h) for n, h in rows}


RANGE_FILTER = (
    "org_id = %(org_id)s AND chain_id = %(chain_id)s"
    " AND block_number >= %(range_start)s AND block_number < %(range_end)s"
)


def count_rows(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    chain_id: int,
    dataset: str,
    start: int,
    end: int,
) -> int:
    """The org's hot rows of ``dataset`` with block_number in ``[start, end)``."""
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {}.{} WHERE " + RANGE_FILTER).format(
            sql.Identifier(HOT_SCHEMA), sql.Identifier(hot_table(dataset))
        ),
        _key(org_id, chain_id, range_start=start, range_end=end),
    ).fetchone()
    assert row is not None
    return int(row[0])


def read_range(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    chain_id: int,
    dataset: str,
    start: int,
    end: int,
) -> pa.Table:
    """The org's hot rows of ``[start, end)`` as an Arrow table with cryo's exact schema,
    sorted as cryo."""
    schema = arrow_schema(dataset)
    query = sql.SQL("SELECT {} FROM {}.{} WHERE " + RANGE_FILTER + " ORDER BY {}").format(
        sql.SQL(", ").join(sql.Identifier(n) for n in schema.names),
        sql.Identifier(HOT_SCHEMA),
        sql.Identifier(hot_table(dataset)),
        sql.SQL(", ").join(sql.Identifier(k) for k in SORT_KEYS[dataset]),
    )
    with conn.cursor() as cur:
        cur.execute(query, _key(org_id, chain_id, range_start=start, range_end=end))
        rows = cur.fetchall()
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema.names]
    arrays = [
        pa.array([_arrow_value(v) for v in col], type=field.type)
        for col, field in zip(columns, schema, strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _arrow_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value)
    if isinstance(value, memoryview):
        return bytes(value)
    return value
