"""A loopback JSON-RPC proxy that stands in for a remote node: added latency, counts, hooks.

``RpcProxy(upstream, latency_seconds=0.05)`` serves HTTP on a free loopback port (stdlib asyncio on a
private thread) and forwards every POST body, single or JSON-RPC batch, to ``upstream`` after
sleeping ``latency_seconds``. The sleep is per HTTP request and concurrent: N requests in
flight at once all wait together, as they would on a network, so a client's concurrency
(cryo runs many requests at once) still pays off. ``GET /_proxy/stats`` (and ``.stats()``)
reports what went through: HTTP requests, JSON-RPC calls, batches, calls per method, upstream
failures and the most requests ever in flight at once.

An upstream that cannot be reached (refused, timed out, reset) gets the client a JSON-RPC
error (code ``UPSTREAM_ERROR_CODE``, one per call of a batch) with HTTP 502; an upstream
answer of any status is passed through unchanged. The upstream URL is a secret (it can carry
an API key) and never appears in a reply, a log line or ``repr``.

Faults plug in through a ``ProxyHook``; ``FaultProxy`` (a ``FaultHook``: drops, 429s,
truncated JSON, missing logs, a wrong chain id, a stale head, refused spans, missing methods)
is the one the RPC-pool tests drive. Hooks plug in: ``before`` sees each request (sequence number and
parsed calls) and may answer it instead of the upstream (an error, a stall: it is async);
``after`` sees each reply and may replace it (drop logs, corrupt a field); either may raise
``DropConnection`` to reset the connection. The default hook passes everything through.

For a process of its own (so its CPU does not compete with the process under test)::

    python -m trace_lite.devtools.rpcproxy --upstream http://127.0.0.1:8545 --latency-ms 50

prints ``listening on http://127.0.0.1:PORT`` and serves until SIGTERM/SIGINT;
``spawn_proxy`` does that and returns a handle with ``url``, ``stats()`` and ``stop()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any

import httpx

log = logging.getLogger(__name__)

STATS_PATH = "/_proxy/stats"
UPSTREAM_ERROR_CODE = -32050
JSON_HEADERS = {"content-type": "application/json"}
START_TIMEOUT_SECONDS = 15.0
MAX_HEADER_BYTES = 1 << 20


@dataclass(frozen=True)
class Exchange:
    """One HTTP request through the proxy. ``calls`` are the parsed JSON-RPC call objects
    (empty when the body is not JSON-RPC); ``batch`` is true for a JSON array body."""

    seq: int
    body: bytes
    calls: tuple[dict[str, Any], ...]
    batch: bool

    @property
    def methods(self) -> list[str]:
        return [str(c.get("method")) for c in self.calls]


@dataclass(frozen=True)
class Reply:
    """What the client gets back: an HTTP status, a body (JSON) and extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


class DropConnection(Exception):  # noqa: N818 - an instruction, not an error
    """Raised by a hook to close the client's connection without a reply (a reset)."""


class ProxyHook:
    """Per-request extension point (faults, rewriting). The default passes everything through.

    ``before`` runs after the added latency and before the upstream call; returning a
    ``Reply`` answers the client without calling the upstream. ``after`` runs on every reply
    (upstream's or ``before``'s) and returns the one to send. Raising ``DropConnection`` from
    either closes the client's connection without an answer. Both run concurrently for
    concurrent requests; a hook keeps its own state thread-safe if it has any.
    """

    async def before(self, exchange: Exchange) -> Reply | None:
        return None

    async def after(self, exchange: Exchange, reply: Reply) -> Reply:
        return reply


@dataclass
class ProxyStats:
    """Counters of one proxy since it started."""

    http_requests: int = 0
    rpc_calls: int = 0
    batches: int = 0
    upstream_errors: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    methods: Counter[str] = field(default_factory=Counter)

    def as_json(self) -> dict[str, Any]:
        return {
            "http_requests": self.http_requests,
            "rpc_calls": self.rpc_calls,
            "batches": self.batches,
            "upstream_errors": self.upstream_errors,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "methods": dict(self.methods),
        }


def parse_calls(body: bytes) -> tuple[tuple[dict[str, Any], ...], bool]:
    """The JSON-RPC call objects of a request body, and whether it is a batch. A body that is
    not JSON-RPC gives no calls (it is still forwarded: the upstream answers it)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return (), False
    if isinstance(doc, list):
        return tuple(c for c in doc if isinstance(c, dict)), True
    if isinstance(doc, dict):
        return (doc,), False
    return (), False


def error_reply(exchange: Exchange, message: str, code: int = UPSTREAM_ERROR_CODE) -> Reply:
    """A JSON-RPC error for every call of ``exchange`` (an array for a batch), HTTP 502."""

    def one(call: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "jsonrpc": "2.0",
            "id": None if call is None else call.get("id"),
            "error": {"code": code, "message": message},
        }

    doc: Any = (
        [one(c) for c in exchange.calls]
        if exchange.batch
        else one(exchange.calls[0] if exchange.calls else None)
    )
    return Reply(502, json.dumps(doc).encode())


class _Upstream:
    """Keep-alive HTTP/1.1 connections to the upstream, opened as concurrency needs them."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("upstream must be an http(s) URL")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = parts.scheme == "https"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = parts.netloc.rpartition("@")[2]
        self._head = (
            f"POST {path} HTTP/1.1\r\nhost: {host_header}\r\n"
            "content-type: application/json\r\ncontent-length: "
        ).encode("latin-1")
        self._timeout = timeout
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, body: bytes) -> Reply:
        """Send ``body``; the upstream's reply. Raises ``OSError``/``TimeoutError``/``ValueError``
        when the upstream cannot be reached or answers garbage."""
        request = self._head + str(len(body)).encode() + b"\r\n\r\n" + body
        while True:
            reused = bool(self._idle)
            if reused:
                reader, writer = self._idle.pop()
            else:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        self._host, self._port, ssl=self._ssl or None, limit=MAX_HEADER_BYTES
                    ),
                    self._timeout,
                )
            try:
                writer.write(request)
                message = await asyncio.wait_for(_read_message(reader), self._timeout)
                if message is None:
                    raise ConnectionResetError("upstream closed the connection")
            except (OSError, asyncio.IncompleteReadError):
                writer.close()
                if reused:  # a keep-alive connection the upstream had closed: once more, fresh
                    continue
                raise
            start, headers, payload = message
            if headers.get("connection", "").lower() == "close":
                writer.close()
            else:
                self._idle.append((reader, writer))
            return Reply(int(start.split(" ", 2)[1]), payload)

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _read_message(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes] | None:
    """One HTTP/1.1 message: start line, lower-cased headers, body (content-length or chunked).
    ``None`` at a clean end of stream. Raises ``ValueError`` on a malformed message."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    except asyncio.LimitOverrunError as exc:
        raise ValueError("HTTP header too large") from exc
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError("malformed HTTP header")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # trailers are not used by JSON-RPC
                break
            chunks.append(await reader.readexactly(size + 2))
        body = b"".join(c[:-2] for c in chunks)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return lines[0], headers, body


def _render(reply: Reply, keep_alive: bool) -> bytes:
    reason = HTTPStatus(reply.status).phrase if reply.status in _STATUSES else "Status"
    head = (
        f"HTTP/1.1 {reply.status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(reply.body)}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in reply.headers)
        + ("" if keep_alive else "connection: close\r\n")
        + "\r\n"
    )
    return head.encode("latin-1") + reply.body


_STATUSES = {s.value for s in HTTPStatus}


class _App:
    """Per-connection HTTP/1.1 loop (stdlib asyncio): stats on GET, forwarding on POST."""

    def __init__(
        self, upstream: str, latency_seconds: float, hook: ProxyHook, timeout: float
    ) -> None:
        self._upstream = _Upstream(upstream, timeout)
        self.latency_seconds = latency_seconds
        self.hook = hook
        self._lock = threading.Lock()
        self._seq = 0
        self.stats = ProxyStats()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self.stats.as_json()

    def close(self) -> None:
        self._upstream.close()

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                try:
                    message = await _read_message(reader)
                except (ValueError, asyncio.IncompleteReadError):
                    writer.write(_render(Reply(400, b'{"error": "bad HTTP request"}'), False))
                    break
                if message is None:
                    break
                start, headers, body = message
                method, _, rest = start.partition(" ")
                target, _, version = rest.partition(" ")
                keep_alive = (
                    version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                )
                if method == "GET" and target == STATS_PATH:
                    reply = Reply(200, json.dumps(self.snapshot()).encode())
                elif method != "POST":
                    reply = Reply(405, b'{"error": "POST JSON-RPC here"}')
                else:
                    try:
                        reply = await self.handle(body)
                    except DropConnection:
                        break
                writer.write(_render(reply, keep_alive))
                await writer.drain()
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        except asyncio.CancelledError:
            # the proxy is stopping (its open connections are cancelled): end quietly, since
            # Python 3.11's start_server callback logs a cancelled handler as an error
            pass
        finally:
            writer.close()

    async def handle(self, body: bytes) -> Reply:
        """Count, wait the latency, run the hook, forward; never raises for upstream faults."""
        calls, batch = parse_calls(body)
        with self._lock:
            self._seq += 1
            exchange = Exchange(self._seq, body, calls, batch)
            s = self.stats
            s.http_requests += 1
            s.rpc_calls += len(calls)
            s.batches += int(batch)
            s.methods.update(exchange.methods)
            s.in_flight += 1
            s.max_in_flight = max(s.max_in_flight, s.in_flight)
        try:
            if self.latency_seconds > 0:
                await asyncio.sleep(self.latency_seconds)
            reply = await self.hook.before(exchange)
            if reply is None:
                reply = await self._forward(exchange)
            return await self.hook.after(exchange, reply)
        finally:
            with self._lock:
                self.stats.in_flight -= 1

    async def _forward(self, exchange: Exchange) -> Reply:
        try:
            return await self._upstream.post(exchange.body)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            with self._lock:
                self.stats.upstream_errors += 1
            # the exception text can carry the URL: name only its class
            log.warning("upstream failed: %s", type(exc).__name__)
            return error_reply(exchange, f"upstream unavailable ({type(exc).__name__})")


class RpcProxy:
    """The proxy on a private thread (and event loop) of this process. Use as a context
    manager, or ``start()``/``stop()``. ``port=0`` picks a free port; send requests to ``url``."""

    def __init__(
        self,
        upstream: str,
        *,
        latency_seconds: float = 0.0,
        hook: ProxyHook | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        timeout: float = 60.0,
    ) -> None:
        if latency_seconds < 0:
            raise ValueError("latency_seconds must be >= 0")
        self.app = _App(upstream, latency_seconds, hook or ProxyHook(), timeout)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(2048)  # connections queue from now on, before the loop serves
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:  # never the upstream URL
        return f"RpcProxy({self.url}, latency={self.app.latency_seconds:g}s)"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        return self.app.snapshot()

    def _run(self, loop: asyncio.AbstractEventLoop, ready: threading.Event | None) -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(
            asyncio.start_server(self.app.serve_connection, sock=self._sock, limit=MAX_HEADER_BYTES)
        )
        if ready is not None:
            ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.app.close()
            loop.run_until_complete(asyncio.sleep(0))  # let closed transports finish
            loop.close()

    def start(self) -> RpcProxy:
        """Serve on a daemon thread; returns once the proxy accepts requests."""
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._loop, ready), name="rpcproxy", daemon=True
        )
        self._thread.start()
        if not ready.wait(START_TIMEOUT_SECONDS):
            raise RuntimeError("rpc proxy did not start")
        return self

    def stop(self) -> None:
        """Stop serving and close the socket. Idempotent."""
        if self._loop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop = self._thread = None
        self._sock.close()

    def serve_forever(self) -> None:
        """Serve on the calling (main) thread until SIGINT/SIGTERM (the ``python -m`` entry)."""
        loop = asyncio.new_event_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, loop.stop)
        self._run(loop, None)
        self._sock.close()

    def __enter__(self) -> RpcProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- provider faults (the RPC-pool tests) --------------------------------------------------


@dataclass
class Faults:
    """Faults a ``FaultHook`` applies; mutable while the proxy runs. Counted faults (``drop``,
    ``rate_limit``, ``truncate``) apply to the next N requests (carrying one of
    ``fault_methods`` when that is set); the others to every matching call."""

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


def _rpc_error(call: dict[str, Any], code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call.get("id"), "error": {"code": code, "message": message}}


class FaultHook(ProxyHook):
    """Injects ``faults`` (dropped connections, 429 with ``Retry-After``, truncated JSON, a
    block's logs missing, a wrong chain id, a stale head, refused wide log ranges, missing
    methods); ``hits`` counts each fault applied, so a test can prove it was exercised."""

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _take(self, name: str, methods: set[str]) -> bool:
        """Consume one count of a counted fault (if the request is one it applies to)."""
        only = self.faults.fault_methods
        if only is not None and not only & methods:
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

    async def before(self, exchange: Exchange) -> Reply | None:
        methods = set(exchange.methods)
        if self._take("drop", methods):
            raise DropConnection
        if self._take("rate_limit", methods):
            return Reply(429, b"rate limited", (("retry-after", f"{self.faults.retry_after:g}"),))
        return None

    async def after(self, exchange: Exchange, reply: Reply) -> Reply:
        if reply.status == 200 and exchange.calls:
            try:
                doc = json.loads(reply.body)
            except ValueError:
                doc = None
            answers = doc if isinstance(doc, list) else [doc]
            by_id = {a.get("id"): a for a in answers if isinstance(a, dict)}
            out = [self._answer(c, by_id.get(c.get("id"))) for c in exchange.calls]
            reply = Reply(200, json.dumps(out if exchange.batch else out[0]).encode())
        if self._take("truncate", set(exchange.methods)):
            reply = Reply(reply.status, reply.body[: len(reply.body) // 2], reply.headers)
        return reply

    def _answer(self, call: dict[str, Any], upstream: dict[str, Any] | None) -> Any:
        """One call's answer: a fault's, or the upstream's (logs of a block dropped)."""
        method = call.get("method")
        f = self.faults
        if method in f.missing_methods:
            self._hit("missing_method")
            return _rpc_error(call, -32601, f"the method {method} does not exist/is not available")
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
                return _rpc_error(call, -32005, f"query exceeds max block range {f.max_log_span}")
        if method == "eth_getLogs" and f.omit_logs_of_block is not None and upstream:
            logs = upstream.get("result") or []
            kept = [
                log
                for log in logs
                if int(log.get("blockNumber", "0x0"), 16) != f.omit_logs_of_block
            ]
            if len(kept) != len(logs):
                self._hit("omit_logs")
                upstream = {**upstream, "result": kept}
        return upstream


class FaultProxy(RpcProxy):
    """An ``RpcProxy`` with a ``FaultHook``: ``with FaultProxy(url) as proxy: proxy.faults.x =
    ...``; ``hits`` counts the faults applied, ``methods`` every JSON-RPC method seen."""

    def __init__(self, upstream: str, faults: Faults | None = None) -> None:
        self.hook = FaultHook(faults)
        super().__init__(upstream, hook=self.hook)

    @property
    def faults(self) -> Faults:
        return self.hook.faults

    @property
    def hits(self) -> Counter[str]:
        return self.hook.hits

    @property
    def methods(self) -> Counter[str]:
        return Counter(self.stats()["methods"])


# --- a proxy in a process of its own -------------------------------------------------------


@dataclass
class ProxyProcess:
    """A ``python -m trace_lite.devtools.rpcproxy`` child: its ``url``, ``stats()`` and ``stop()``."""

    process: subprocess.Popen[str]
    url: str

    def stats(self) -> dict[str, Any]:
        resp = httpx.get(self.url + STATS_PATH, timeout=10)
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn_proxy(upstream: str, *, latency_seconds: float = 0.0) -> ProxyProcess:
    """Start the proxy as a child process (dies with this one on Linux); wait until it
    listens. Raises ``RuntimeError`` if it does not come up."""
    argv = [
        sys.executable, "-m", "trace_lite.devtools.rpcproxy",
        "--upstream", upstream,
        "--latency-ms", str(latency_seconds * 1000.0),
        "--die-with-parent",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # the child prints one line once it listens
    if not line.startswith("listening on "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"rpc proxy did not start (exit {proc.poll()})")
    return ProxyProcess(proc, line.removeprefix("listening on "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="JSON-RPC URL to forward to")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="added per HTTP request")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--die-with-parent", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.die_with_parent:
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PDEATHSIG
    proxy = RpcProxy(
        args.upstream, latency_seconds=args.latency_ms / 1000.0, host=args.host, port=args.port
    )
    print(f"listening on {proxy.url}", flush=True)
    proxy.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
