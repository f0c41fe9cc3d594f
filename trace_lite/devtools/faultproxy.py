"""A loopback JSON-RPC proxy that injects provider faults, for tests.

``FaultProxy(upstream_url)`` listens on 127.0.0.1 (a free port) and forwards every JSON-RPC
request (single or batch) to the upstream node, applying the faults set on ``proxy.faults``
(mutable while it runs): dropped connections, 429 with ``Retry-After``, truncated JSON,
``eth_getLogs`` replies that omit one block's logs, a wrong chain id, a stale head, refused log
ranges wider than a span, methods that are "not found". ``hits`` counts each fault applied and
``methods`` every method seen, so a test can prove the fault was really exercised.
"""

from __future__ import annotations

import json
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import httpx


@dataclass
class Faults:
    drop: int = 0  # close the next N connections without a reply
    rate_limit: int = 0  # answer the next N requests HTTP 429
    retry_after: float = 1.0  # the Retry-After those 429s carry
    truncate: int = 0  # cut the next N replies in half (invalid JSON)
    omit_logs_of_block: int | None = None  # eth_getLogs replies lack this block's logs
    chain_id: int | None = None  # eth_chainId answers this instead
    head: int | None = None  # eth_blockNumber answers this instead (a stale node)
    max_log_span: int | None = None  # eth_getLogs over more blocks is refused (-32005)
    missing_methods: set[str] = field(default_factory=set)  # answered -32601
    # drop/rate_limit/truncate only requests carrying one of these methods (None: any)
    fault_methods: set[str] | None = None


class FaultProxy:
    """Run with ``with FaultProxy(url) as proxy: ... proxy.url ...``."""

    def __init__(self, upstream: str, faults: Faults | None = None) -> None:
        self.upstream = upstream
        self.faults = faults or Faults()
        self.hits: Counter[str] = Counter()
        self.methods: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._http = httpx.Client(
            timeout=60, limits=httpx.Limits(max_connections=256, max_keepalive_connections=64)
        )
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                proxy._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # cryo opens many connections at once
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self._http.close()

    # --- one request -----------------------------------------------------------------

    def _take(self, name: str, methods: set[str] | None = None) -> bool:
        """Consume one count of a counted fault (if the request is one it applies to)."""
        only = self.faults.fault_methods
        if only is not None and methods is not None and not only & methods:
            return False
        with self._lock:
            left = getattr(self.faults, name)
            if left <= 0:
                return False
            setattr(self.faults, name, left - 1)
            self.hits[name] += 1
            return True

    def _hit(self, name: str) -> None:
        with self._lock:
            self.hits[name] += 1

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        body = json.loads(handler.rfile.read(length) or b"null")
        calls = body if isinstance(body, list) else [body]
        names = {str(c.get("method")) for c in calls}
        with self._lock:
            for c in calls:
                self.methods[str(c.get("method"))] += 1
        if self._take("drop", names):
            handler.connection.shutdown(socket.SHUT_RDWR)
            handler.close_connection = True
            return
        if self._take("rate_limit", names):
            self._send(
                handler, 429, b"rate limited", {"Retry-After": f"{self.faults.retry_after:g}"}
            )
            return
        replies = [self._answer(c) for c in calls]
        out = json.dumps(replies if isinstance(body, list) else replies[0]).encode()
        if self._take("truncate", names):
            out = out[: len(out) // 2]
        self._send(handler, 200, out, {"Content-Type": "application/json"})

    def _answer(self, call: dict[str, Any]) -> dict[str, Any]:
        method = call.get("method")
        f = self.faults
        if method in f.missing_methods:
            self._hit("missing_method")
            return _error(call, -32601, f"the method {method} does not exist/is not available")
        if method == "eth_chainId" and f.chain_id is not None:
            self._hit("chain_id")
            return {"jsonrpc": "2.0", "id": call.get("id"), "result": hex(f.chain_id)}
        if method == "eth_blockNumber" and f.head is not None:
            self._hit("head")
            return {"jsonrpc": "2.0", "id": call.get("id"), "result": hex(f.head)}
        if method == "eth_getLogs" and f.max_log_span is not None:
            spec = (call.get("params") or [{}])[0]
            span = int(spec.get("toBlock", "0x0"), 16) - int(spec.get("fromBlock", "0x0"), 16) + 1
            if span > f.max_log_span:
                self._hit("refused_span")
                return _error(call, -32005, f"query exceeds max block range {f.max_log_span}")
        reply: dict[str, Any] = self._http.post(self.upstream, json=call).json()
        if method == "eth_getLogs" and f.omit_logs_of_block is not None:
            logs = reply.get("result") or []
            kept = [
                log
                for log in logs
                if int(log.get("blockNumber", "0x0"), 16) != f.omit_logs_of_block
            ]
            if len(kept) != len(logs):
                self._hit("omit_logs")
                reply["result"] = kept
        return reply

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]
    ) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


def _error(call: dict[str, Any], code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call.get("id"), "error": {"code": code, "message": message}}
