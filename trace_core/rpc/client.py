"""A small JSON-RPC client for EVM nodes (httpx, synchronous, with timeouts).

Every failure is an ``RpcError`` (retryable) naming the client's label and the method; the
endpoint URL is a secret (it often carries an API key) and never appears in a message, a
log line or ``repr``.
"""

from __future__ import annotations

import abc
import functools
import itertools
import logging
import ssl
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import httpx

from trace_core.errors import RpcError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 10.0
MAX_BATCH = 500
_MAX_ERROR_TEXT = 200


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # building httpx's default context (certifi bundle) costs ~50 ms: do it once per process
    return httpx.create_ssl_context()


def hex_int(value: Any) -> int:
    """``"0x1a"`` -> 26 (ints pass through). Raises ``RpcError`` for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise RpcError(f"expected a hex quantity, got {str(value)[:40]!r}")


def retry_after_seconds(value: str | None) -> float | None:
    """An HTTP ``Retry-After`` in seconds (delta-seconds form; an HTTP date counts as 1 s)."""
    if not value:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return 1.0


class JsonRpc(abc.ABC):
    """The typed EVM methods over ``call``/``batch`` (one endpoint, or a pool of them)."""

    label: str

    @abc.abstractmethod
    def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        """One JSON-RPC call; returns ``result``. Raises ``RpcError``."""

    @abc.abstractmethod
    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several calls; results in call order. Raises ``RpcError`` if any call fails."""

    def chain_id(self) -> int:
        return hex_int(self.call("eth_chainId"))

    def block_number(self) -> int:
        return hex_int(self.call("eth_blockNumber"))

    def get_block_by_number(
        self, number: int, full_transactions: bool = False
    ) -> dict[str, Any] | None:
        block: dict[str, Any] | None = self.call(
            "eth_getBlockByNumber", [hex(number), full_transactions]
        )
        return block

    def get_block_receipts(self, number: int) -> list[dict[str, Any]]:
        receipts = self.call("eth_getBlockReceipts", [hex(number)])
        return list(receipts or [])

    def get_transaction_receipt(self, tx_hash: str) -> dict[str, Any] | None:
        receipt: dict[str, Any] | None = self.call("eth_getTransactionReceipt", [tx_hash])
        return receipt

    def transaction_counts(self, start: int, end: int) -> list[int]:
        """Transactions per block for blocks ``[start, end)`` (batched)."""
        calls = [("eth_getBlockTransactionCountByNumber", [hex(n)]) for n in range(start, end)]
        return [hex_int(c) if c is not None else 0 for c in self.batch(calls)]

    def log_count(self, start: int, end: int) -> int:
        """Logs in blocks ``[start, end)`` counted from receipts (blocks with txs only)."""
        counts = self.transaction_counts(start, end)
        busy = [start + i for i, c in enumerate(counts) if c]
        receipts = self.batch([("eth_getBlockReceipts", [hex(n)]) for n in busy])
        return sum(len(r.get("logs") or []) for block in receipts for r in (block or []))


class RpcClient(JsonRpc):
    """JSON-RPC over HTTP. ``label`` (a pool name, say) stands in for the URL in messages.

    ``RpcError`` fields: ``method``, ``status`` (HTTP), ``rpc_code`` (JSON-RPC error code),
    ``retry_after`` (seconds, from an HTTP 429/503 ``Retry-After``).
    """

    def __init__(
        self, url: str, *, label: str = "rpc", timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        self._url = url
        self.label = label
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout),
            headers={"content-type": "application/json"},
            verify=_ssl_context(),
        )

    def __repr__(self) -> str:
        return f"RpcClient({self.label})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- transport -----------------------------------------------------------------------

    def _post(self, body: Any, what: str) -> Any:
        try:
            response = self._http.post(self._url, json=body)
        except httpx.TimeoutException as exc:
            raise RpcError(
                f"{self.label}: {what} timed out after {self.timeout:g}s", method=what
            ) from exc
        except httpx.HTTPError as exc:
            raise RpcError(
                f"{self.label}: {what}: endpoint unreachable ({type(exc).__name__})", method=what
            ) from exc
        if response.status_code != 200:
            raise RpcError(
                f"{self.label}: {what}: HTTP {response.status_code}",
                method=what,
                status=response.status_code,
                retry_after=retry_after_seconds(response.headers.get("retry-after")),
            )
        try:
            return response.json()
        except ValueError as exc:
            raise RpcError(f"{self.label}: {what}: response is not JSON", method=what) from exc

    def _result(self, reply: Any, method: str) -> Any:
        if not isinstance(reply, dict):
            raise RpcError(f"{self.label}: {method}: malformed JSON-RPC reply", method=method)
        error = reply.get("error")
        if error is not None:
            code = error.get("code") if isinstance(error, dict) else None
            text = str(error.get("message", "") if isinstance(error, dict) else error)
            raise RpcError(
                f"{self.label}: {method} failed: {text[:_MAX_ERROR_TEXT]}",
                method=method,
                rpc_code=code,
            )
        if "result" not in reply:
            raise RpcError(f"{self.label}: {method}: reply has no result", method=method)
        return reply["result"]

    def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        """One JSON-RPC call; returns ``result``. Raises ``RpcError``."""
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        return self._result(self._post(body, method), method)

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several calls in JSON-RPC batches of at most ``MAX_BATCH``; results in call order.

        Raises ``RpcError`` if any call fails.
        """
        results: list[Any] = []
        for i in range(0, len(calls), MAX_BATCH):
            chunk = calls[i : i + MAX_BATCH]
            first = next(self._ids)
            body = [
                {"jsonrpc": "2.0", "id": first + n, "method": m, "params": list(p)}
                for n, (m, p) in enumerate(chunk)
            ]
            self._ids = itertools.count(first + len(chunk))
            what = f"batch of {len(chunk)} {chunk[0][0]}"
            replies = self._post(body, what)
            if not isinstance(replies, list):
                replies = [replies]  # some nodes answer a failed batch with one error object
            by_id = {r.get("id"): r for r in replies if isinstance(r, dict)}
            for n, (method, _params) in enumerate(chunk):
                reply = by_id.get(first + n)
                if reply is None:
                    reply = replies[0] if len(replies) == 1 else None
                results.append(self._result(reply, method))
        return results
