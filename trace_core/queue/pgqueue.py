"""pgqueue: the QueueDriver on Postgres state (``state.queue_messages`` / ``state.queue_dead``).

Semantics follow SQS and pgmq: ``receive`` is one statement that locks due rows with
``FOR UPDATE SKIP LOCKED``, hands out a fresh random receipt per receive and hides the row
until ``now() + visibility_timeout`` (database clock). ``ack``/``extend``/``nack`` match on
``(message_id, receipt)``, so a receipt superseded by a redelivery, or one whose message is
gone, raises ``StaleReceipt`` and changes nothing, from any process. A message already received
``max_receive_count`` times is moved to ``state.queue_dead`` (reason ``max_receive_count``,
last error from its nacks) when it becomes due again, or at once when nacked at the limit.

Durability: every change commits with ``synchronous_commit=off`` (no wait for the WAL flush,
which costs most of a batch-1 round trip). A server crash may forget the last few: a forgotten
ack, receipt or nack only redelivers a message (at-least-once holds); a forgotten dead-letter
replay or purge leaves the messages dead, to be replayed or purged again. A forgotten publish
loses nothing either: messages are wake-ups published only by the outbox (DESIGN invariant 4),
whose rows live in this same database and are marked sent by a later commit. WAL is flushed
in order, so once that mark is durable the publish before it is too; if the mark is lost as
well, the row is still pending and is published again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from trace_core.db.connection import redact_url
from trace_core.db.queries import q
from trace_core.errors import InvalidPayload, QueueError, StaleReceipt
from trace_core.queue.base import DeadMessage, Message, QueueStats, check_publisher
from trace_core.queue.pgconns import PgConns, PoolTimeout
from trace_core.queue.pgstats import queue_stats

log = logging.getLogger(__name__)

# A queue table's statistics are always stale (it churns), and a prepared statement keeps the
# generic plan made when the table was small: a sequential or bitmap scan that then sorts the
# whole backlog on every receive. Queue statements always have an index path; force it. And
# keep the (index) generic plan: left to choose, Postgres planned a quarter to nine tenths of
# batch-1 receives as custom plans, paying the planner on the server each time.
PLANNER_OPTIONS = (
    "-c enable_seqscan=off -c enable_bitmapscan=off -c plan_cache_mode=force_generic_plan"
)
_OPTIONS = f"{PLANNER_OPTIONS} -c synchronous_commit=off"
_POLL_FIRST_SECONDS = 0.01
_POLL_MAX_SECONDS = 0.2


class PgQueue:
    """QueueDriver on the state database.

    Two connection pools of up to ``pool_size`` each (publishing/admin, and consuming; pgqueue's
    own ``PgConns``), both with asynchronous commit. ``open()`` (called by the first
    operation, or explicitly) opens them; ``close()`` closes their connections (a later
    operation opens them again). Thread-safe: every call borrows one pooled autocommit
    connection.
    """

    def __init__(self, state_url: str, *, max_receive_count: int, pool_size: int = 4) -> None:
        if max_receive_count < 1:
            raise ValueError("max_receive_count must be >= 1")
        if pool_size < 1:
            raise ValueError("pool_size must be >= 1")
        self.max_receive_count = max_receive_count
        self._where = redact_url(state_url)
        # Two pools so publishers and consumers never wait for each other's connections; both
        # commit with synchronous_commit=off (see the module docstring for why nothing is lost).
        self._pool = _make_pool(state_url, pool_size)
        self._consume_pool = _make_pool(state_url, pool_size)
        self._opened = False
        self._open_lock = threading.Lock()

    # --- lifecycle --------------------------------------------------------------------

    def open(self) -> None:
        """Open the pools (one connection each). Raises ``QueueError`` if unreachable."""
        with self._open_lock:
            if self._opened:
                return
            try:
                self._pool.open()
                self._consume_pool.open()
            except psycopg.Error as exc:
                self._pool.close()
                self._consume_pool.close()
                raise QueueError(f"pgqueue cannot connect to {self._where}") from exc
            self._opened = True

    def close(self) -> None:
        """Close both pools (idempotent)."""
        self._pool.close()
        self._consume_pool.close()
        self._opened = False

    def __enter__(self) -> PgQueue:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _conn(self, *, consume: bool = False) -> Iterator[psycopg.Cursor[Any]]:
        """A cursor of a pooled autocommit connection; psycopg and pool errors become
        ``QueueError``."""
        if not self._opened:
            self.open()
        pool = self._consume_pool if consume else self._pool
        try:
            with pool.borrow() as cur:
                yield cur
        except PoolTimeout as exc:
            raise QueueError(f"pgqueue: no free connection to {self._where}: {exc}") from exc
        except psycopg.Error as exc:
            raise QueueError(f"pgqueue on {self._where}: {type(exc).__name__}: {exc}") from exc

    # --- publishing -------------------------------------------------------------------

    def publish(self, queue: str, payload: Mapping[str, Any], *, delay_seconds: float = 0) -> str:
        """Enqueue one message, receivable after ``delay_seconds``; returns its id."""
        check_publisher(queue)
        with self._conn() as cur:
            row = cur.execute(
                q("pgqueue", "publish"),
                {"queue": queue, "payload": _dumps(payload), "delay": float(delay_seconds)},
            ).fetchone()
        assert row is not None
        return str(row[0])

    def publish_batch(
        self, queue: str, payloads: Sequence[Mapping[str, Any]], *, delay_seconds: float = 0
    ) -> list[str]:
        """Enqueue many messages in one statement; ids are returned in payload order."""
        check_publisher(queue)
        if not payloads:
            return []
        with self._conn() as cur:
            rows = cur.execute(
                q("pgqueue", "publish_batch"),
                {
                    "queue": queue,
                    "payloads": [_dumps(p) for p in payloads],
                    "delay": float(delay_seconds),
                },
            ).fetchall()
        return [str(i) for i in sorted(r[0] for r in rows)]

    # --- consuming --------------------------------------------------------------------

    def receive(
        self,
        queue: str,
        max_messages: int = 1,
        *,
        visibility_timeout: float,
        wait_seconds: float = 0,
    ) -> list[Message]:
        """Receive up to ``max_messages`` due messages, each hidden for ``visibility_timeout``.

        With ``wait_seconds`` > 0, polls (short sleeps, backing off to 0.2 s) until a message
        arrives or the wait elapses. Never returns a message at its receive limit: such rows
        are moved to the dead store instead.
        """
        if max_messages < 1 or visibility_timeout < 0:
            raise ValueError("max_messages must be >= 1 and visibility_timeout >= 0")
        deadline = time.monotonic() + max(0.0, wait_seconds)
        pause = _POLL_FIRST_SECONDS
        while True:
            got = self._receive_once(queue, max_messages, visibility_timeout)
            if got:
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, _POLL_MAX_SECONDS)

    def _receive_once(self, queue: str, limit: int, visibility: float) -> list[Message]:
        params = {
            "queue": queue,
            "limit": limit,
            "visibility": float(visibility),
            "max_receive_count": self.max_receive_count,
        }
        messages: list[Message] = []
        with self._conn(consume=True) as cur:
            # Rows at the receive limit take slots of the batch; bury them and go again.
            for _ in range(8):
                rows = cur.execute(q("pgqueue", "receive"), params).fetchall()
                spent = []
                for message_id, receipt, payload, count in rows:
                    if receipt is None:
                        spent.append(message_id)
                    else:
                        messages.append(
                            Message(queue, str(message_id), str(receipt), payload, count)
                        )
                if not spent:
                    break
                self._bury(queue, spent, cur)
                if len(messages) >= limit:
                    break
                params["limit"] = limit - len(messages)
        return messages

    def _bury(self, queue: str, spent: list[int], cur: psycopg.Cursor[Any] | None = None) -> None:
        """Move rows stripped at their receive limit to the dead store (``bury_due``)."""
        if cur is None:
            with self._conn(consume=True) as own:
                return self._bury(queue, spent, own)
        buried = cur.execute(
            q("pgqueue", "bury_due"),
            {"message_ids": spent, "max_receive_count": self.max_receive_count},
        ).rowcount
        log.warning("dead-lettered", extra={"queue": queue, "count": buried})
        return None

    def ack(self, message: Message) -> None:
        """Delete the message. Raises ``StaleReceipt`` if ``message.receipt`` is not current."""
        message_id, receipt = _key(message)
        with self._conn(consume=True) as cur:
            n = cur.execute(
                q("pgqueue", "ack"), {"message_id": message_id, "receipt": receipt}
            ).rowcount
        if n != 1:
            raise StaleReceipt(
                f"stale receipt for message {message.message_id} on {message.queue}",
                message_id=message.message_id,
            )

    def ack_batch(self, messages: Sequence[Message]) -> list[Message]:
        """Delete messages whose receipts are current; returns the stale ones (left untouched)."""
        keyed = [(m, _try_key(m)) for m in messages]
        valid = [(m, k) for m, k in keyed if k is not None]
        stale = [m for m, k in keyed if k is None]
        if valid:
            with self._conn(consume=True) as cur:
                rows = cur.execute(
                    q("pgqueue", "ack_batch"),
                    {
                        "message_ids": [k[0] for _, k in valid],
                        "receipts": [k[1] for _, k in valid],
                    },
                ).fetchall()
            deleted = {(r[0], r[1]) for r in rows}
            stale.extend(m for m, k in valid if k not in deleted)
        if stale:
            log.info("ack_batch skipped stale receipts", extra={"count": len(stale)})
        return stale

    def ack_receive(
        self,
        done: Sequence[Message],
        queue: str,
        max_messages: int = 1,
        *,
        visibility_timeout: float,
    ) -> tuple[list[Message], list[Message]]:
        """``ack_batch(done)`` then ``receive(queue, max_messages)`` (no wait) in one statement:
        returns ``(stale, received)``, the stale ones of ``done`` left untouched. A consumer
        at batch 1 acks what it finished as it asks for the next."""
        if max_messages < 1 or visibility_timeout < 0:
            raise ValueError("max_messages must be >= 1 and visibility_timeout >= 0")
        keyed = [(m, _try_key(m)) for m in done]
        valid = [(m, k) for m, k in keyed if k is not None]
        if not valid:
            return [m for m, _ in keyed], self._receive_once(
                queue, max_messages, visibility_timeout
            )
        params = {
            "message_ids": [k[0] for _, k in valid],
            "receipts": [k[1] for _, k in valid],
            "queue": queue,
            "limit": max_messages,
            "visibility": float(visibility_timeout),
            "max_receive_count": self.max_receive_count,
        }
        with self._conn(consume=True) as cur:
            rows = cur.execute(q("pgqueue", "ack_receive"), params).fetchall()
        deleted = set()
        received: list[Message] = []
        spent = []
        for acked, message_id, receipt, payload, count in rows:
            if acked:
                deleted.add((message_id, receipt))
            elif receipt is None:
                spent.append(message_id)
            else:
                received.append(Message(queue, str(message_id), str(receipt), payload, count))
        stale = [m for m, k in keyed if k is None or k not in deleted]
        if stale:
            log.info("ack_receive skipped stale receipts", extra={"count": len(stale)})
        if spent:  # rows at their receive limit were stripped, not delivered: as in receive
            self._bury(queue, spent)
            if len(received) < max_messages:
                left = max_messages - len(received)
                received += self._receive_once(queue, left, visibility_timeout)
        return stale, received

    def extend(self, message: Message, visibility_timeout: float) -> None:
        """Hide the message for ``visibility_timeout`` from now. Raises ``StaleReceipt``."""
        message_id, receipt = _key(message)
        with self._conn(consume=True) as cur:
            n = cur.execute(
                q("pgqueue", "extend"),
                {
                    "message_id": message_id,
                    "receipt": receipt,
                    "visibility": float(visibility_timeout),
                },
            ).rowcount
        if n != 1:
            raise StaleReceipt(
                f"stale receipt for message {message.message_id} on {message.queue}",
                message_id=message.message_id,
            )

    def nack(self, message: Message, *, delay_seconds: float = 0, error: str | None = None) -> None:
        """Give the message back: receivable again after ``delay_seconds``, or dead-lettered
        at once when it has used its ``max_receive_count`` receives. Raises ``StaleReceipt``."""
        message_id, receipt = _key(message)
        with self._conn(consume=True) as cur:
            row = cur.execute(
                q("pgqueue", "nack"),
                {
                    "message_id": message_id,
                    "receipt": receipt,
                    "delay": float(delay_seconds),
                    "error": error[:2000] if error is not None else None,
                    "max_receive_count": self.max_receive_count,
                },
            ).fetchone()
        if row is None or row[0] != 1:
            raise StaleReceipt(
                f"stale receipt for message {message.message_id} on {message.queue}",
                message_id=message.message_id,
            )

    # --- inspection and dead letters --------------------------------------------------

    def stats(self, queue: str) -> QueueStats:
        with self._conn() as cur:
            return queue_stats(cur.connection, queue)

    def list_dead(self, queue: str, limit: int = 100) -> list[DeadMessage]:
        with self._conn() as cur:
            rows = cur.execute(
                q("pgqueue", "list_dead"), {"queue": queue, "limit": limit}
            ).fetchall()
        return [
            DeadMessage(queue, str(mid), payload, count, reason, last_error)
            for mid, payload, count, reason, last_error in rows
        ]

    def replay_dead(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Move dead messages (all, or the given ids) back to the live queue, receive count 0."""
        with self._conn() as cur:
            return cur.execute(
                q("pgqueue", "replay_dead"), {"queue": queue, "message_ids": _ids(message_ids)}
            ).rowcount

    def purge_dead(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Delete dead messages (all, or the given ids); returns how many."""
        with self._conn() as cur:
            return cur.execute(
                q("pgqueue", "purge_dead"), {"queue": queue, "message_ids": _ids(message_ids)}
            ).rowcount


def _make_pool(url: str, size: int) -> PgConns:
    return PgConns(url, max_size=size, options=_OPTIONS, timeout=30.0)


def _dumps(payload: Mapping[str, Any]) -> str:
    """JSON text of a payload; raises ``InvalidPayload`` for anything JSON cannot carry."""
    try:
        return json.dumps(payload, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"queue payload is not JSON: {exc}") from exc


def _ids(message_ids: Sequence[str] | None) -> list[int] | None:
    if message_ids is None:
        return None
    out = []
    for mid in message_ids:
        try:
            out.append(int(mid))
        except ValueError:
            continue  # not a pgqueue id: matches nothing
    return out


def _try_key(message: Message) -> tuple[int, uuid.UUID] | None:
    """``(message_id, receipt)`` as stored, or None when malformed (stale by definition)."""
    try:
        return int(message.message_id), uuid.UUID(message.receipt)
    except ValueError:
        return None


def message_keys(
    messages: Sequence[Message],
) -> tuple[list[tuple[Message, tuple[int, uuid.UUID]]], list[Message]]:
    """``(message, (id, receipt))`` of each well-formed message, and the malformed ones
    (stale by definition): what a statement matching receipts takes (``tasks.take``)."""
    keyed = [(m, _try_key(m)) for m in messages]
    return [(m, k) for m, k in keyed if k is not None], [m for m, k in keyed if k is None]


def _key(message: Message) -> tuple[int, uuid.UUID]:
    key = _try_key(message)
    if key is None:
        raise StaleReceipt(
            f"malformed receipt for message {message.message_id!r}", message_id=message.message_id
        )
    return key
