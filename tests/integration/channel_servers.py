"""Real local servers on 127.0.0.1 that answer like the services alert channels reach:

- ``SlackLike``: an incoming-webhook endpoint (200 ``ok``; 404 ``no_service`` for an unknown
  hook; 400 ``invalid_payload`` / ``invalid_blocks`` for a malformed message);
- ``PagerDutyLike``: the Events API v2 (202 with the ``dedup_key``; 400 ``invalid event`` for a
  wrong routing key or a malformed event; one incident per ``dedup_key``);
- ``SmtpSink``: an aiosmtpd server with STARTTLS (required) or implicit TLS and AUTH, over a
  certificate from a throwaway CA the client is told to trust (``TRACE_SMTP_CA_FILE``).

Each HTTP server can be scripted to answer its next requests otherwise (a 429 with
Retry-After, a 503), as the real services do under load.
"""

from __future__ import annotations

import abc
import datetime as dt
import ipaddress
import json
import ssl
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class LocalService(abc.ABC):
    """A threaded HTTP server on 127.0.0.1; ``answer`` is the service's behaviour."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.script: dict[str, list[Answer]] = {}  # path -> the next answers there
        self.lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's API
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_unparsed": raw.decode(errors="replace")}
                req = Seen(self.path, dict(self.headers.items()), body)
                with service.lock:
                    service.seen.append(req)
                    queued = service.script.get(self.path)
                    scripted = queued.pop(0) if queued else None
                    status, headers, out = scripted or service.answer(req)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @abc.abstractmethod
    def answer(self, req: Seen) -> Answer:
        """The answer to ``req`` when no scripted one is queued for its path."""

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class SlackLike(LocalService):
    """Slack incoming webhooks: only ``hooks`` paths exist."""

    def __init__(self, hooks: set[str]) -> None:
        self.hooks = hooks
        self.messages: list[dict[str, Any]] = []
        super().__init__()

    def answer(self, req: Seen) -> Answer:
        if req.path not in self.hooks:
            return 404, {}, b"no_service"
        body = req.body
        if not isinstance(body.get("text"), str) and not body.get("blocks"):
            return 400, {}, b"invalid_payload"
        blocks = body.get("blocks", [])
        if not isinstance(blocks, list) or len(blocks) > 50:
            return 400, {}, b"invalid_blocks"
        if any(not isinstance(b, dict) or "type" not in b for b in blocks):
            return 400, {}, b"invalid_blocks"
        self.messages.append(body)
        return 200, {"Content-Type": "text/plain"}, b"ok"


class PagerDutyLike(LocalService):
    """PagerDuty Events API v2 at ``/v2/enqueue``: one incident per ``dedup_key``."""

    def __init__(self, routing_key: str) -> None:
        self.routing_key = routing_key
        self.incidents: dict[str, dict[str, Any]] = {}
        self.triggers = 0
        super().__init__()

    def answer(self, req: Seen) -> Answer:
        if req.path != "/v2/enqueue":
            return 404, {}, b""
        body = req.body
        invalid = None
        if body.get("routing_key") != self.routing_key:
            invalid = "Invalid routing key"
        elif body.get("event_action") != "trigger":
            invalid = "Invalid event_action"
        else:
            payload = body.get("payload") or {}
            missing = [k for k in ("summary", "source", "severity") if not payload.get(k)]
            if missing:
                invalid = f"'payload.{missing[0]}' is missing"
        if invalid:
            out = {"status": "invalid event", "message": "Event object is invalid"}
            return 400, {}, json.dumps(out | {"errors": [invalid]}).encode()
        self.triggers += 1
        key = body.get("dedup_key") or f"generated-{self.triggers}"
        self.incidents.setdefault(key, body)
        return 202, {}, json.dumps({"status": "success", "dedup_key": key}).encode()


# --- TLS and SMTP ------------------------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    ca_file: Path
    server: ssl.SSLContext


def make_tls(directory: Path) -> Tls:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost signed by it."""
    now = dt.datetime.now(dt.UTC)

    def build(subject: str, key: Any, issuer: x509.Name, signer: Any, ca: bool) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            b = b.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
            )
        else:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return b.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trace test CA")])
    ca = build("trace test CA", ca_key, ca_name, ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build("127.0.0.1", key, ca_name, ca_key, False)
    ca_file, cert_file, key_file = (directory / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return Tls(ca_file, server)


@dataclass
class SmtpSink:
    """An aiosmtpd server recording every accepted message."""

    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)  # recipient -> SMTP reply
    controller: Controller | None = None

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        msg = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"

    def start(
        self,
        *,
        tls: Tls | None = None,
        mode: str = "starttls",
        credentials: tuple[str, str] | None = None,
    ) -> SmtpSink:
        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any):
            ok = (
                credentials is not None
                and isinstance(data, LoginPassword)
                and (data.login.decode(), data.password.decode()) == credentials
            )
            if ok:
                self.logins.append(data.login.decode())
            return AuthResult(success=ok, handled=False)

        kwargs: dict[str, Any] = {}
        if tls is not None and mode == "starttls":
            kwargs |= {"tls_context": tls.server, "require_starttls": True}
        if tls is not None and mode == "tls":
            kwargs |= {"ssl_context": tls.server}
        if credentials is not None:
            kwargs |= {"authenticator": authenticator, "auth_required": True}
        self.controller = Controller(
            self, hostname="127.0.0.1", port=self.port, server_hostname="localhost", **kwargs
        )
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None
