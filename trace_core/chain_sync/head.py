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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from psycopg import Connection

from trace_core.db.queries import q
from trace_core.errors import RpcError
from trace_core.settings import rpc_pool_env_var, rpc_pool_url

log = logging.getLogger(__name__)

RPC_TIMEOUT_SECONDS = 5.0
MISSING_RPC_URL = "MissingRpcUrl"
RPC_UNAVAILABLE = "RpcUnavailable"
CHAIN_ID_MISMATCH = "ChainIdMismatch"

UrlResolver = Callable[[str], str | None]


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
    rpc_url_resolver: UrlResolver = rpc_pool_url,
    client: httpx.Client | None = None,
    timeout: float = RPC_TIMEOUT_SECONDS,
) -> list[HeadPoll]:
    """Poll every due ``(chain, pool)`` once and record the result; returns the polls made.

    ``conn`` must not be inside a transaction: no lock is held while waiting on the network.
    """
    with conn.transaction():
        due = conn.execute(q("chain_sync", "due_head_pools"), {"org_id": org_id}).fetchall()
    if not due:
        return []
    own_client = client is None
    http = client or httpx.Client(timeout=timeout)
    polls: list[HeadPoll] = []
    try:
        for chain_id, pool, _poll_seconds, previous_error in due:
            poll = _poll(http, chain_id, pool, rpc_url_resolver(pool))
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
    finally:
        if own_client:
            http.close()
    return polls


def _poll(http: httpx.Client, chain_id: int, pool: str, url: str | None) -> HeadPoll:
    if url is None:
        return HeadPoll(
            chain_id, pool, None, MISSING_RPC_URL, f"{rpc_pool_env_var(pool)} is not set"
        )
    try:
        served = _hex_quantity(json_rpc(http, url, "eth_chainId"))
        if served != chain_id:
            message = f"pool {pool} serves chain {served}, not {chain_id}"
            return HeadPoll(chain_id, pool, None, CHAIN_ID_MISMATCH, message)
        head = _hex_quantity(json_rpc(http, url, "eth_blockNumber"))
    except RpcError as exc:
        return HeadPoll(chain_id, pool, None, RPC_UNAVAILABLE, exc.message)
    return HeadPoll(chain_id, pool, head)


def json_rpc(http: httpx.Client, url: str, method: str, params: list[Any] | None = None) -> Any:
    """One JSON-RPC call. Raises ``RpcError`` whose message never contains the URL."""
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}
    try:
        resp = http.post(url, json=body)
    except httpx.HTTPError as exc:  # transport errors; their text may embed the URL, so drop it
        raise RpcError(f"{method}: {type(exc).__name__}") from None
    if not resp.is_success:
        raise RpcError(f"{method}: HTTP {resp.status_code}")
    try:
        reply = resp.json()
    except ValueError:
        raise RpcError(f"{method}: reply is not JSON") from None
    if not isinstance(reply, dict):
        raise RpcError(f"{method}: reply is not a JSON-RPC object")
    if reply.get("error") is not None:
        err = reply["error"]
        detail = err.get("message", err) if isinstance(err, dict) else err
        raise RpcError(f"{method}: JSON-RPC error: {str(detail)[:200]}")
    if "result" not in reply:
        raise RpcError(f"{method}: reply has no result")
    return reply["result"]


def _hex_quantity(value: Any) -> int:
    if not isinstance(value, str):
        raise RpcError(f"expected a hex quantity, got {type(value).__name__}")
    text = value[2:] if value[:2] in ("0x", "0X") else value
    try:
        return int(text, 16)
    except ValueError:
        raise RpcError(f"expected a hex quantity, got {value[:40]!r}") from None


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
