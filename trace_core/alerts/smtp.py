"""The email channel: one SMTP transaction per delivery, settings from ``TRACE_SMTP_*``.

Transport security is ``starttls`` (default; the upgrade is required, never skipped),
``tls`` (implicit TLS, port 465) or ``none`` (only without credentials: a password never
crosses the wire in clear). Certificates are verified against the system CAs plus
``TRACE_SMTP_CA_FILE``. Credentials come from settings only and are scrubbed from every
error. What an SMTP failure means:

- connection refused/reset/timed out, a 4xx reply, a dropped connection -> retry;
- a 5xx reply, an authentication failure, a server without STARTTLS, a certificate that does
  not verify, no ``TRACE_SMTP_HOST`` -> failed (a fix is needed, then ``dlq replay``);
- some recipients refused, others accepted -> delivered (a resend would repeat the mail to
  the accepted ones), the refused ones named in the error.

``Message-ID`` is derived from the delivery id: a resend after a crash carries the same id.
"""

from __future__ import annotations

import smtplib
import ssl
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trace_core.alerts import render
from trace_core.alerts.channel_spec import EmailChannel
from trace_core.alerts.outcome import SendResult, scrub
from trace_core.settings import Settings


@dataclass(frozen=True)
class SmtpConfig:
    host: str | None
    port: int
    security: Literal["starttls", "tls", "none"]
    username: str | None
    password: str | None
    sender: str
    timeout: float
    ca_file: Path | None

    @classmethod
    def from_settings(cls, s: Settings) -> SmtpConfig:
        return cls(
            host=s.smtp_host,
            port=s.smtp_port,
            security=s.smtp_security,
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
            sender=s.smtp_from,
            timeout=s.smtp_timeout_seconds,
            ca_file=s.smtp_ca_file,
        )

    def tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if self.ca_file is not None:
            ctx.load_verify_locations(cafile=str(self.ca_file))
        return ctx


def _reply(code: int, what: str, message: bytes | str) -> SendResult:
    text = message.decode(errors="replace") if isinstance(message, bytes) else message
    outcome: Literal["retry", "failed"] = "retry" if 400 <= code < 500 else "failed"
    return SendResult(outcome, status_code=code, error=f"SMTP {code} {what}: {text}".strip())


class NoAuthMechanism(smtplib.SMTPException):
    """The server offers neither AUTH PLAIN nor AUTH LOGIN."""


def _login(smtp: smtplib.SMTP, user: str, password: str) -> None:
    """AUTH with one mechanism, PLAIN before LOGIN (``SMTP.login`` falls through to the next
    mechanism after a refusal, which some servers answer by hanging until the timeout)."""
    offered = smtp.esmtp_features.get("auth", "").upper().split()
    mechanism = next((m for m in ("PLAIN", "LOGIN") if m in offered), None)
    if mechanism is None:
        raise NoAuthMechanism("no AUTH PLAIN or LOGIN offered")
    smtp.user, smtp.password = user, password
    handler = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
    code, resp = smtp.auth(mechanism, handler)
    if code not in (235, 503):
        raise smtplib.SMTPAuthenticationError(code, resp)


def _transact(cfg: SmtpConfig, msg: Any, to: list[str]) -> dict[str, tuple[int, bytes]]:
    assert cfg.host is not None
    ctx = cfg.tls_context() if cfg.security != "none" else None
    smtp: smtplib.SMTP
    if cfg.security == "tls":
        smtp = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout, context=ctx)
    else:
        smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
    with smtp:
        smtp.ehlo()
        if cfg.security == "starttls":
            smtp.starttls(context=ctx)  # SMTPNotSupportedError when not offered: never skipped
            smtp.ehlo()
        if cfg.username:
            _login(smtp, cfg.username, cfg.password or "")
        return smtp.send_message(msg, from_addr=cfg.sender, to_addrs=to)


def send_email(
    cfg: SmtpConfig, channel: EmailChannel, delivery: uuid.UUID, event: Mapping[str, Any]
) -> SendResult:
    """Send one alert mail; never raises for SMTP or network failures."""
    if not cfg.host:
        return SendResult("failed", error="email channels need TRACE_SMTP_HOST")
    if cfg.security == "none" and cfg.username:
        return SendResult(
            "failed", error="refusing SMTP credentials without TLS (TRACE_SMTP_SECURITY=none)"
        )
    msg = render.email_message(
        delivery, event, sender=cfg.sender, to=list(channel.to), prefix=channel.subject_prefix
    )
    where = f"{cfg.host}:{cfg.port}"
    try:
        refused = _transact(cfg, msg, list(channel.to))
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        outcome: Literal["retry", "failed"] = (
            "retry" if any(400 <= c < 500 for c in codes) else "failed"
        )
        names = ", ".join(f"{a} ({c})" for a, (c, _) in sorted(exc.recipients.items()))
        first = min(codes) if codes else None
        return SendResult(outcome, status_code=first, error=f"SMTP recipients refused: {names}")
    except smtplib.SMTPAuthenticationError as exc:
        return _failed_clean(cfg, f"SMTP {exc.smtp_code} authentication failed at {where}")
    except NoAuthMechanism:
        return SendResult("failed", error=f"SMTP server {where} offers no AUTH PLAIN or LOGIN")
    except smtplib.SMTPNotSupportedError:
        return SendResult("failed", error=f"SMTP server {where} does not offer STARTTLS")
    except smtplib.SMTPResponseException as exc:
        result = _reply(exc.smtp_code, f"from {where}", exc.smtp_error)
        return SendResult(
            result.outcome,
            status_code=result.status_code,
            error=scrub(result.error or "", cfg.password, cfg.username),
        )
    except smtplib.SMTPServerDisconnected as exc:
        return SendResult("retry", error=scrub(f"SMTP {where} disconnected: {exc}", cfg.password))
    except ssl.SSLCertVerificationError as exc:
        return SendResult(
            "failed", error=f"SMTP {where} TLS certificate not trusted: {exc.verify_message}"
        )
    except (OSError, smtplib.SMTPException) as exc:
        # connection refused/reset, timeouts, TLS handshake failures: transient
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return SendResult("retry", error=scrub(f"SMTP {where} unreachable: {reason}", cfg.password))
    if refused:
        names = ", ".join(f"{addr} ({code})" for addr, (code, _) in sorted(refused.items()))
        return SendResult("delivered", status_code=250, error=f"some recipients refused: {names}")
    return SendResult("delivered", status_code=250)


def _failed_clean(cfg: SmtpConfig, message: str) -> SendResult:
    return SendResult("failed", error=scrub(message, cfg.password))
