"""The sync-time logs check: each block's ``logsBloom`` against the logs cryo extracted.

A node can answer ``eth_getLogs`` without some logs (a reply that is valid JSON and simply
short). Every block header carries the 2048-bit bloom of its logs' addresses and topics, so
the bloom rebuilt from the extracted rows must equal the header's: a dropped log leaves its
bits unset (unless other logs of the block set the same bits, which the opt-in receipts check
catches). Cost: the block headers of the range, ``MAX_BATCH`` per JSON-RPC batch (2 requests
for 1,000 blocks), no receipts. Only unfiltered ``logs`` extractions are checked: a
``contract``/``topic`` filter extracts a subset on purpose, where the bloom cannot match.

A mismatch raises ``CoverageError`` (retryable): the range is not committed and its retry
extracts it again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from Crypto.Hash import keccak

from trace_core.errors import CoverageError, RpcError
from trace_core.rpc.client import MAX_BATCH, JsonRpc

BLOOM_BYTES = 256
LOG_FILTER_OPTIONS = ("contract", "topic0", "topic1", "topic2", "topic3")
_COLUMNS = ["block_number", "address", "topic0", "topic1", "topic2", "topic3"]
_EMPTY = bytes(BLOOM_BYTES)


def item_mask(item: bytes) -> int:
    """``item``'s three bloom bits as a 2048-bit integer (yellow paper, eq. 29: the low 11
    bits of the first three byte pairs of keccak256(item); bit ``b`` is ``1 << b``, so the
    integer's 256-byte big-endian form is the bloom)."""
    digest = keccak.new(digest_bits=256, data=item).digest()
    mask = 0
    for i in (0, 2, 4):
        mask |= 1 << (((digest[i] << 8) | digest[i + 1]) & 2047)
    return mask


def logs_bloom(items: Iterable[bytes], cache: dict[bytes, int] | None = None) -> bytes:
    """The bloom of a block's log addresses and topics (``cache``: item -> mask, shared
    across the blocks of a range, where addresses and topics repeat)."""
    cache = {} if cache is None else cache
    bloom = 0
    for item in set(items):
        mask = cache.get(item)
        if mask is None:
            mask = cache[item] = item_mask(item)
        bloom |= mask
    return bloom.to_bytes(BLOOM_BYTES, "big")


def applies(dataset: str, cryo_options: Mapping[str, Any]) -> bool:
    """Whether the bloom check can tell anything: unfiltered ``logs`` only."""
    return dataset == "logs" and not any(cryo_options.get(k) for k in LOG_FILTER_OPTIONS)


def extracted_blooms(files: Sequence[Path]) -> dict[int, bytes]:
    """Per block with at least one extracted log, the bloom of its logs."""
    items: dict[int, set[bytes]] = {}
    for path in files:
        table = pq.read_table(path, columns=_COLUMNS)
        columns = [table.column(name).to_pylist() for name in _COLUMNS]
        for block, *values in zip(*columns, strict=True):
            items.setdefault(int(block), set()).update(v for v in values if v is not None)
    cache: dict[bytes, int] = {}
    return {block: logs_bloom(values, cache) for block, values in items.items()}


def header_blooms(rpc: JsonRpc, start: int, end: int) -> dict[int, bytes]:
    """``logsBloom`` of each block of ``[start, end)`` (batched header calls).

    Raises ``RpcError`` for a missing block or a malformed bloom."""
    out: dict[int, bytes] = {}
    for lo in range(start, end, MAX_BATCH):
        hi = min(end, lo + MAX_BATCH)
        blocks = rpc.batch([("eth_getBlockByNumber", [hex(n), False]) for n in range(lo, hi)])
        for n, block in zip(range(lo, hi), blocks, strict=True):
            raw = (block or {}).get("logsBloom")
            if not isinstance(raw, str) or len(raw) != 2 + 2 * BLOOM_BYTES:
                raise RpcError(f"block {n} has no valid logsBloom", method="eth_getBlockByNumber")
            out[n] = bytes.fromhex(raw[2:])
    return out


def check_logs_bloom(
    rpc: JsonRpc,
    start: int,
    end: int,
    files: Sequence[Path],
    headers: Mapping[int, bytes] | None = None,
) -> int:
    """Compare each block's header bloom with the bloom of its extracted logs; return the
    number of blocks with logs. ``headers``: ``header_blooms`` fetched ahead (while cryo ran),
    else fetched here. Raises ``CoverageError`` naming the first blocks that differ."""
    extracted = extracted_blooms(files)
    if headers is None:
        headers = header_blooms(rpc, start, end)
    differing = [n for n in range(start, end) if headers[n] != extracted.get(n, _EMPTY)]
    if differing:
        shown = ", ".join(str(n) for n in differing[:5])
        more = f" and {len(differing) - 5} more" if len(differing) > 5 else ""
        raise CoverageError(
            f"logs output of [{start}, {end}) does not match the logsBloom of block(s) "
            f"{shown}{more}: the node's eth_getLogs reply omitted or altered logs"
        )
    return len(extracted)
