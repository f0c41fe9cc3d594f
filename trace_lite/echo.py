"""A local webhook receiver for ``trace-lite demo``: shows an alert delivery arrive.

It listens on 127.0.0.1 only (the Lite default ``TRACE_ALERT_WEBHOOK_ALLOW_PRIVATE=true``
lets deliveries reach it; keep that ``false`` on shared hosts), answers every POST ``200``,
and records each body by its ``Idempotency-Key``: a resend of the same delivery is counted,
never recorded as a second arrival, as a receiver honouring the key would.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from trace_lite.stack import free_port, port_free

MAX_BODY_BYTES = 1 << 20
PATH = "/trace-demo-echo"


@dataclass
class Arrival:
    """One delivery the receiver got (``posts`` counts resends with the same key)."""

    delivery_id: str
    dedupe_key: str
    alert: str
    first_at: datetime
    posts: int = 1


class EchoReceiver:
    """A threaded HTTP server on 127.0.0.1 recording alert webhooks; ``stop()`` when done."""

    def __init__(self, port: int) -> None:
        self._lock = threading.Lock()
        self._arrivals: dict[str, Arrival] = {}
        echo = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's API
                length = int(self.headers.get("Content-Length", "0"))
                if length > MAX_BODY_BYTES:
                    self.send_error(413)
                    return
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self.send_error(400)
                    return
                echo._record(self.headers.get("Idempotency-Key", ""), body)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self._server = Server(("127.0.0.1", port), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, preferred_port: int) -> EchoReceiver:
        """On ``preferred_port`` (so a resumed demo keeps the same channel), else a free one."""
        port = preferred_port if port_free("127.0.0.1", preferred_port) else free_port("127.0.0.1")
        return cls(port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def _record(self, key: str, body: Any) -> None:
        if not isinstance(body, dict):
            return
        key = key or str(body.get("delivery_id", ""))
        with self._lock:
            if key in self._arrivals:
                self._arrivals[key].posts += 1
                return
            self._arrivals[key] = Arrival(
                delivery_id=key,
                dedupe_key=str(body.get("dedupe_key", "")),
                alert=str(body.get("alert", "")),
                first_at=datetime.now(UTC),
            )

    def arrivals(self) -> dict[str, Arrival]:
        """Arrivals by dedupe key."""
        with self._lock:
            return {a.dedupe_key: a for a in self._arrivals.values()}

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
