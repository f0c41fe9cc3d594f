"""The block follower: keep ``data.hot_*`` equal to the canonical chain near its head.

``follow_once`` is one bounded step (a Dagster sensor tick or a loop iteration calls it
repeatedly) for one org's follower of one chain: hot rows, cursor, invalidations and events
are the org's (two orgs following one chain each follow it through their own RPC and keep
their own rows). Per step, under a per-(org, chain) advisory lock:

1. the tip to continue from is the highest stored hot block (else the state cursor);
2. if the chain no longer has that tip's hash, walk back to the common ancestor, delete the
   orphaned hot rows and record a ``data_invalidations`` row (one data transaction);
3. fetch the next blocks (full transactions + receipts), each checked against its parent's
   hash, write them in one data transaction, then advance the state cursor with a
   ``dataset_events`` outbox row in one state transaction.

Data commits before state. A crash between the two leaves hot rows above the cursor; the next
step verifies them against the chain like any tip and adopts them (emitting the event it
missed), so a crash loses and duplicates nothing.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from psycopg import Connection

from trace_core import outbox
from trace_core.datasets.events import DATASET_EVENTS
from trace_core.db.connection import Databases, connect, system_session
from trace_core.db.queries import q
from trace_core.errors import ChainMismatch, ConfigError, RpcError
from trace_core.hot import reorg
from trace_core.hot.tables import (
    HOT_DATASETS,
    HotBlock,
    hex_int,
    hot_low,
    hot_tip,
    rows_from_rpc,
    stored_hashes,
    write_blocks,
)
from trace_core.rpc.client import RpcClient
from trace_core.rpc.pool import RpcPool
from trace_core.runtime import Runtime
from trace_core.settings import Settings, rpc_pool_env_var, rpc_pool_urls

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 50
MAX_REORG_ROUNDS = 8


# --- JSON-RPC ----------------------------------------------------------------------------


class BlockSource(Protocol):
    """What the follower needs from a node.

    ``get_blocks(first, last)`` returns ``(block with full txs, receipts)`` pairs for
    consecutive blocks from ``first``, stopping before the first block the node lacks.
    """

    def chain_id(self) -> int: ...

    def block_number(self) -> int: ...

    def block_hash(self, number: int) -> bytes | None: ...

    def get_blocks(
        self, first: int, last: int
    ) -> list[tuple[Mapping[str, Any], list[Mapping[str, Any]]]]: ...

    def close(self) -> None: ...


class RpcBlockSource:
    """``BlockSource`` over ``trace_core.rpc.client.RpcClient`` (httpx, bounded timeouts).

    A batch of blocks is one JSON-RPC batch request: ``eth_getBlockByNumber(n, true)`` and
    ``eth_getBlockReceipts(n)`` per block. Nodes without ``eth_getBlockReceipts`` fall back to
    ``eth_getTransactionReceipt`` per transaction. The URL never appears in errors.
    """

    def __init__(
        self, url: str | Sequence[str], *, label: str = "block_follower", timeout: float = 10.0
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        # several URLs: a pool that fails over between them (trace_core.rpc.pool)
        self.rpc: RpcClient | RpcPool = (
            RpcClient(urls[0], label=label, timeout=timeout)
            if len(urls) == 1
            else RpcPool.from_urls(label, urls, timeout=timeout)
        )
        self._has_block_receipts = True

    def chain_id(self) -> int:
        return self.rpc.chain_id()

    def block_number(self) -> int:
        return self.rpc.block_number()

    def block_hash(self, number: int) -> bytes | None:
        block = self.rpc.get_block_by_number(number, False)
        return None if block is None else bytes.fromhex(str(block["hash"])[2:])

    def get_blocks(
        self, first: int, last: int
    ) -> list[tuple[Mapping[str, Any], list[Mapping[str, Any]]]]:
        numbers = range(first, last + 1)
        if self._has_block_receipts:
            calls: list[tuple[str, Sequence[Any]]] = []
            for n in numbers:
                calls += [
                    ("eth_getBlockByNumber", [hex(n), True]),
                    ("eth_getBlockReceipts", [hex(n)]),
                ]
            try:
                replies = self.rpc.batch(calls)
            except RpcError as exc:
                if exc.fields.get("rpc_code") != -32601:
                    raise
                log.info("node lacks eth_getBlockReceipts; using per-transaction receipts")
                self._has_block_receipts = False
            else:
                out = []
                for block, receipts in zip(replies[0::2], replies[1::2], strict=True):
                    if block is None:
                        break
                    out.append((block, list(receipts or [])))
                return out
        out = []
        for n in numbers:
            block = self.rpc.get_block_by_number(n, True)
            if block is None:
                break
            txs = block.get("transactions") or []
            calls = [("eth_getTransactionReceipt", [t["hash"]]) for t in txs]
            receipts = self.rpc.batch(calls) if calls else []
            out.append((block, [r for r in receipts if r is not None]))
        return out

    def close(self) -> None:
        self.rpc.close()


# --- state: cursor, lock, events ---------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    """The last block whose rows are committed and announced. ``hash`` None = unknown."""

    first_block: int
    number: int
    hash: bytes | None


@dataclass(frozen=True)
class FollowResult:
    """Outcome of one ``follow_once`` step.

    ``ingested``: blocks written; ``reorged_depth``: depth of the deepest reorg repaired
    (0 = none); ``head``: the chain head last observed; ``cursor``: last committed block;
    ``skipped``: another follower held the (org, chain) lock, nothing was done; ``org_id``:
    whose hot rows.
    """

    chain_id: int
    ingested: int
    reorged_depth: int
    head: int | None
    cursor: int | None
    skipped: bool = False
    org_id: str | None = None


def acting_org(settings: Settings, org_id: str | uuid.UUID | None) -> str:
    """``org_id`` (default the settings' org) in canonical form."""
    return str(uuid.UUID(str(org_id or settings.org_id)))


def org_session(settings: Settings, org_id: str | uuid.UUID) -> dict[str, Any]:
    """``connect`` keywords of the hot path's system connections for one org's work: the
    system role (row-level security bypassed: every query names the org), rows stamped
    with ``org_id``."""
    return {**system_session(settings), "org_id": str(org_id)}


def load_cursor(conn: Connection[Any], org_id: str | uuid.UUID, chain_id: int) -> Cursor | None:
    """The org's follower cursor on ``chain_id`` (None before its first committed step)."""
    row = conn.execute(
        q("hot", "get_cursor"), {"org_id": uuid.UUID(str(org_id)), "chain_id": chain_id}
    ).fetchone()
    if row is None:
        return None
    return Cursor(int(row[0]), int(row[1]), None if row[2] is None else bytes(row[2]))


def _lock_key(org_id: str | uuid.UUID, chain_id: int) -> int:
    digest = hashlib.sha256(f"trace.hot_follower:{org_id}:{chain_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def follower_lock(conn: Connection[Any], org_id: str | uuid.UUID, chain_id: int) -> Iterator[bool]:
    """Session advisory lock for one org's follower of one chain; yields False if another
    holds it."""
    key = _lock_key(uuid.UUID(str(org_id)), chain_id)
    row = conn.execute(q("hot", "try_advisory_lock"), {"key": key}).fetchone()
    got = bool(row and row[0])
    try:
        yield got
    finally:
        if got and not conn.closed:
            conn.execute(q("hot", "release_advisory_lock"), {"key": key})


def commit_cursor(
    conn: Connection[Any],
    *,
    org_id: str | uuid.UUID,
    chain_id: int,
    old: Cursor | None,
    first_block: int,
    number: int,
    block_hash: bytes | None,
    reorg_depth: int = 0,
) -> Cursor:
    """Move the cursor and announce the change on ``dataset_events``, in one state transaction.

    Forward: a ``hot_range_committed`` event for the new blocks. Backward (a reorg rolled
    back blocks the cursor had announced): a ``hot_range_invalidated`` event. Event rows
    are deduplicated by org, chain, range and block hash, so a repeated commit adds none
    (and two orgs following one chain announce their own ranges).
    """
    org = uuid.UUID(str(org_id))
    events: list[tuple[str, dict[str, Any]]] = []
    base = {"org_id": str(org), "chain_id": chain_id, "datasets": list(HOT_DATASETS)}
    old_number = first_block - 1 if old is None else old.number
    if old is not None and (
        number < old.number or (number == old.number and block_hash != old.hash)
    ):
        start = number + 1 if number < old.number else number
        payload = {
            **base,
            "event": "hot_range_invalidated",
            "range_start": start,
            "range_end": old.number + 1,
            "reason": "reorg",
            "depth": reorg_depth or old.number - number,
        }
        events.append(
            (f"hot_invalidated:{org}:{chain_id}:{start}:{old.number + 1}:{_hex(old.hash)}", payload)
        )
        old_number = start - 1
    if number > old_number:
        payload = {
            **base,
            "event": "hot_range_committed",
            "range_start": old_number + 1,
            "range_end": number + 1,
            "block_hash": _hex(block_hash),
        }
        events.append(
            (
                f"hot_committed:{org}:{chain_id}:{old_number + 1}:{number + 1}:{_hex(block_hash)}",
                payload,
            )
        )
    with conn.transaction():
        conn.execute(
            q("hot", "upsert_cursor"),
            {
                "org_id": org,
                "chain_id": chain_id,
                "first_block": first_block,
                "block_number": number,
                "block_hash": block_hash,
            },
        )
        for name, payload in events:
            outbox.enqueue(conn, topic=DATASET_EVENTS, payload=payload, dedupe_name=name)
    first = first_block if old is None else min(old.first_block, first_block)
    return Cursor(first, number, block_hash)


def _hex(value: bytes | None) -> str | None:
    return None if value is None else "0x" + value.hex()


# --- the step ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tip:
    number: int
    hash: bytes | None


class _Follower:
    def __init__(
        self,
        *,
        state: Connection[Any],
        data: Connection[Any],
        source: BlockSource,
        org_id: str,
        chain_id: int,
        batch_size: int,
        max_reorg_depth: int,
    ) -> None:
        self.state, self.data, self.source = state, data, source
        self.org_id, self.chain_id = org_id, chain_id
        self.batch_size = batch_size
        self.max_reorg_depth = max_reorg_depth

    def run(self, max_blocks: int, start_block: int | None) -> FollowResult:
        served = self.source.chain_id()
        if served != self.chain_id:
            raise ChainMismatch(
                f"RPC serves chain {served}, expected chain {self.chain_id}", chain_id=self.chain_id
            )
        cursor = load_cursor(self.state, self.org_id, self.chain_id)
        tip = self._stored_tip(cursor)
        ingested = depth = reorg_rounds = stalls = 0
        head = self.source.block_number()
        while ingested < max_blocks and stalls <= 2:
            if tip is not None and not self._is_canonical(tip, head):
                if reorg_rounds >= MAX_REORG_ROUNDS:
                    log.warning(
                        "chain keeps reorganising; ending this step",
                        extra={"org_id": self.org_id, "chain_id": self.chain_id},
                    )
                    break
                reorg_rounds += 1
                tip, d = self._repair(tip, cursor)
                depth = max(depth, d)
                cursor = self._commit(cursor, tip, reorg_depth=d)
                head = self.source.block_number()
                continue
            if tip is not None and (
                cursor is None or (cursor.number, cursor.hash) != (tip.number, tip.hash)
            ):
                cursor = self._commit(cursor, tip)  # adopt (or rewind to) what the data DB holds
            next_block = (
                tip.number + 1
                if tip is not None
                else (head if start_block is None else start_block)
            )
            if next_block > head:
                break
            last = min(head, next_block + min(self.batch_size, max_blocks - ingested) - 1)
            blocks, complete = self._fetch(next_block, last, None if tip is None else tip.hash)
            if blocks:
                write_blocks(self.data, self.org_id, self.chain_id, blocks)
                tip = _Tip(blocks[-1].number, blocks[-1].hash)
                cursor = self._commit(cursor, tip, first=blocks[0].number)
                ingested += len(blocks)
            stalls = 0 if blocks else stalls + 1
            if complete and last < head:
                continue
            head = self.source.block_number()  # caught up, or the chain changed under the batch
        return FollowResult(
            self.chain_id,
            ingested,
            depth,
            head,
            None if cursor is None else cursor.number,
            org_id=self.org_id,
        )

    def _stored_tip(self, cursor: Cursor | None) -> _Tip | None:
        stored = hot_tip(self.data, self.org_id, self.chain_id)
        if stored is not None:
            return _Tip(stored.number, stored.hash)
        return None if cursor is None else _Tip(cursor.number, cursor.hash)

    def _is_canonical(self, tip: _Tip, head: int) -> bool:
        if tip.hash is None:
            return True
        if tip.number > head:
            return False
        return self.source.block_hash(tip.number) == tip.hash

    def _repair(self, tip: _Tip, cursor: Cursor | None) -> tuple[_Tip, int]:
        """Roll the hot tables back to the common ancestor; returns (new tip, depth)."""
        lo = max(0, tip.number - self.max_reorg_depth - 1)
        stored = stored_hashes(self.data, self.org_id, self.chain_id, lo, tip.number + 1)
        if tip.hash is not None:
            stored.setdefault(tip.number, tip.hash)
        low = hot_low(self.data, self.org_id, self.chain_id)
        lowest = min(low if low is not None else tip.number, tip.number)
        row = self.state.execute(
            q("hot", "compacted_end"), {"org_id": self.org_id, "chain_id": self.chain_id}
        ).fetchone()
        finalized_below = int(row[0]) if row and row[0] is not None else 0
        ancestor = reorg.find_common_ancestor(
            tip=tip.number,
            stored_hash=stored.get,
            canonical_hash=self.source.block_hash,
            lowest_stored=lowest,
            max_depth=self.max_reorg_depth,
            chain_id=self.chain_id,
            finalized_below=finalized_below,
        )
        depth = tip.number - ancestor.number
        reorg.rollback_to(
            self.data,
            org_id=self.org_id,
            chain_id=self.chain_id,
            ancestor=ancestor.number,
            old_tip=tip.number,
            details={
                "old_tip": tip.number,
                "old_tip_hash": _hex(tip.hash),
                "ancestor_hash": _hex(ancestor.hash),
                "depth": depth,
                "cursor": None if cursor is None else cursor.number,
            },
        )
        return _Tip(ancestor.number, ancestor.hash), depth

    def _fetch(self, first: int, last: int, parent: bytes | None) -> tuple[list[HotBlock], bool]:
        """Blocks ``first..last`` chained by parent hash. Returns (blocks, complete).

        Fewer blocks than asked (the node lacks the rest) is ``complete=False``. A parent-hash
        break drops the whole batch (its blocks may be orphaned); the next round repairs.
        """
        out: list[HotBlock] = []
        for block, receipts in self.source.get_blocks(first, last):
            n = first + len(out)
            if hex_int(block.get("number")) != n:
                raise RpcError(f"asked for block {n}, node returned {block.get('number')}")
            hb = rows_from_rpc(self.chain_id, block, receipts)
            if parent is not None and hb.parent_hash != parent:
                log.info(
                    "parent hash mismatch: reorg under way",
                    extra={"chain_id": self.chain_id, "block": n},
                )
                return [], False
            out.append(hb)
            parent = hb.hash
        return out, len(out) == last - first + 1

    def _commit(
        self, cursor: Cursor | None, tip: _Tip, *, reorg_depth: int = 0, first: int | None = None
    ) -> Cursor:
        if cursor is not None:
            first_block = cursor.first_block
        else:
            low = hot_low(self.data, self.org_id, self.chain_id) if first is None else first
            first_block = tip.number + 1 if low is None else low
        return commit_cursor(
            self.state,
            org_id=self.org_id,
            chain_id=self.chain_id,
            old=cursor,
            first_block=min(first_block, tip.number + 1),
            number=tip.number,
            block_hash=tip.hash,
            reorg_depth=reorg_depth,
        )


def follow_once(
    settings: Settings,
    dbs: Databases,
    chain_id: int,
    rpc_url: str | Sequence[str] | None,
    max_blocks: int = 100,
    *,
    start_block: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_reorg_depth: int | None = None,
    source: BlockSource | None = None,
    org_id: str | None = None,
) -> FollowResult:
    """One bounded follower step of org ``org_id`` (default ``settings.org_id``) on
    ``chain_id``: repair reorgs, ingest up to ``max_blocks`` into the org's hot rows.

    ``start_block`` is where a chain with no cursor and no hot rows starts (default: the
    current head; history below it is cryo_ingest's job). ``source`` replaces the HTTP
    client (``rpc_url`` may then be None). Raises ``RpcError`` (retryable), ``ChainMismatch``
    and ``ReorgTooDeep`` (fatal); committed progress is kept either way. Concurrent calls for
    one (org, chain) are safe: all but one return ``skipped=True``.
    """
    org = str(uuid.UUID(str(org_id or settings.org_id)))
    if max_blocks <= 0 or batch_size <= 0:
        raise ValueError("max_blocks and batch_size must be > 0")
    if source is None and not rpc_url:
        raise ValueError("follow_once needs rpc_url or source")
    own_source = source is None
    src: BlockSource = source if source is not None else RpcBlockSource(rpc_url or [])
    try:
        with (
            connect(dbs.state_url, autocommit=True, **org_session(settings, org)) as state,
            connect(dbs.data_url, autocommit=True, **org_session(settings, org)) as data,
            follower_lock(state, org, chain_id) as got,
        ):
            if not got:
                return FollowResult(chain_id, 0, 0, None, None, skipped=True, org_id=org)
            follower = _Follower(
                state=state,
                data=data,
                source=src,
                org_id=org,
                chain_id=chain_id,
                batch_size=batch_size,
                max_reorg_depth=max_reorg_depth or settings.hot_max_reorg_depth,
            )
            result = follower.run(max_blocks, start_block)
    finally:
        if own_source:
            src.close()
    if result.ingested or result.reorged_depth:
        log.info(
            "block follower step",
            extra={
                "org_id": org,
                "chain_id": chain_id,
                "ingested": result.ingested,
                "reorged_depth": result.reorged_depth,
                "head": result.head,
                "cursor": result.cursor,
            },
        )
    return result


DEFAULT_MAX_BLOCKS = 200


def follow_pool(
    rt: Runtime,
    chain_id: int,
    rpc_pool: str,
    *,
    max_blocks: int = DEFAULT_MAX_BLOCKS,
    start_block: int | None = None,
    batch_size: int | None = None,
    environ: Mapping[str, str] | None = None,
    org_id: str | None = None,
) -> FollowResult:
    """``follow_once`` of org ``org_id`` (default the runtime's) against the pool's URLs
    (failing over between them). Raises ``ConfigError`` when the pool is unset."""
    urls = rpc_pool_urls(rpc_pool, environ)
    if not urls:
        raise ConfigError(f"rpc pool {rpc_pool!r} has no URL", field=rpc_pool_env_var(rpc_pool))
    kwargs: dict[str, Any] = {"start_block": start_block, "org_id": org_id}
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    return follow_once(rt.settings, rt.dbs, chain_id, urls, max_blocks, **kwargs)
