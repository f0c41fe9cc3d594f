"""The head observer: poll ``eth_blockNumber`` for the pools that follow_head jobs use.

For each ``(chain, pool)`` of the org's enabled follow_head jobs that is due (its last poll is
older than the smallest ``head_poll_interval_seconds`` among them), resolve the pool's URL from
``TRACE_RPC_POOL_<POOL>_URL``, check ``eth_chainId`` matches the job's chain, read the head and
upsert ``state.chain_head_observations``. A failure (no URL, unreachable node, wrong chain) is
recorded on the observation row as a blocked reason, never raised: the planner then fails
closed once the last good observation goes stale. URLs are secrets and are never logged.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import Connection

from trace_core.db.queries import q
from trace_core.errors import ChainMismatch, RpcError
from trace_core.settings import rpc_pool_env_var, rpc_pool_urls

log = logging.getLogger(__name__)

RPC_TIMEOUT_SECONDS = 5.0
MISSING_RPC_URL = "MissingRpcUrl"
RPC_UNAVAILABLE = "RpcUnavailable"
CHAIN_ID_MISMATCH = "ChainIdMismatch"

# a pool name -> its endpoint URLs (or one URL, or None when it has none)
UrlResolver = Callable[[str], str | Sequence[str] | None]


@dataclass(frozen=True)
class HeadPoll:
    """One poll of one ``(chain, pool)``: the head seen, or why none was."""

    chain_id: int
    rpc_pool: str
    head_block: int | None
    error_kind: str | None = None
    error_message: str | None = None


def observe_heads(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    *,
    rpc_url_resolver: UrlResolver = rpc_pool_urls,
    timeout: float = RPC_TIMEOUT_SECONDS,
) -> list[HeadPoll]:
    """Poll every due ``(chain, pool)`` once and record the result; returns the polls made.

    ``conn`` must not be inside a transaction: no lock is held while waiting on the network.
    """
    with conn.transaction():
        due = conn.execute(q("chain_sync", "due_head_pools"), {"org_id": org_id}).fetchall()
    if not due:
        return []
    polls: list[HeadPoll] = []
    for chain_id, pool, _poll_seconds, previous_error in due:
        poll = _poll(chain_id, pool, rpc_url_resolver(pool), timeout)
        if poll.error_kind is not None:
            # warn when a pool starts failing (or fails differently), not on every poll
            level = logging.WARNING if poll.error_kind != previous_error else logging.DEBUG
            log.log(
                level,
                "head observer: %s",
                poll.error_kind,
                extra={"chain_id": chain_id, "rpc_pool": pool, "error": poll.error_message},
            )
        with conn.transaction():
            if poll.head_block is not None:
                record_head_observation(
                    conn,
                    org_id=org_id,
                    chain_id=chain_id,
                    rpc_pool=pool,
                    head_block=poll.head_block,
                )
            else:
                conn.execute(
                    q("chain_sync", "record_head_failure"),
                    {
                        "org_id": org_id,
                        "chain_id": chain_id,
                        "rpc_pool": pool,
                        "source": pool,
                        "kind": poll.error_kind,
                        "message": poll.error_message,
                    },
                )
        polls.append(poll)
    return polls


def _poll(chain_id: int, pool: str, urls: str | Sequence[str] | None, timeout: float) -> HeadPoll:
    """Poll every endpoint of the pool; the head is the best among those serving the chain
    (a stale or wrong-chain endpoint is logged by ``RpcPool.check`` and left out)."""
    listed = [urls] if isinstance(urls, str) else list(urls or [])
    if not listed:
        return HeadPoll(
            chain_id, pool, None, MISSING_RPC_URL, f"{rpc_pool_env_var(pool)} is not set"
        )
    try:
        from trace_core.rpc.pool import RpcPool  # httpx: loaded when a head is polled

        with RpcPool.from_urls(pool, listed, timeout=timeout, max_attempts=1) as rpc:
            _usable, checks = rpc.check(chain_id)
    except ChainMismatch as exc:
        return HeadPoll(chain_id, pool, None, CHAIN_ID_MISMATCH, exc.message)
    except RpcError as exc:
        return HeadPoll(chain_id, pool, None, RPC_UNAVAILABLE, exc.message)
    head = max(c.head for c in checks if c.problem is None and c.head is not None)
    return HeadPoll(chain_id, pool, head)


def record_head_observation(
    conn: Connection[Any],
    *,
    org_id: str | uuid.UUID,
    chain_id: int,
    rpc_pool: str,
    head_block: int,
    observed_at: datetime | None = None,
    source: str | None = None,
) -> None:
    """Upsert the newest head of ``(org, chain, pool)`` (``observed_at`` defaults to ``now()``).

    Used by the observer and by any trusted writer (an RPC gateway, tests). Clears the pool's
    last poll error.
    """
    conn.execute(
        q("chain_sync", "record_head"),
        {
            "org_id": org_id,
            "chain_id": chain_id,
            "rpc_pool": rpc_pool,
            "head_block": head_block,
            "observed_at": observed_at,
            "source": source or rpc_pool,
        },
    )
