"""``POST /v1/sources/{job}/webhook``: a signed request becomes one run of a transform job
of the settings' org; ``POST /v1/orgs/{org}/sources/{job}/webhook`` of the org named ``org``,
signed with ``TRACE_SOURCE_<ORG>__<JOB>_WEBHOOK_SECRET`` (an unknown org answers as a job
without a secret: 404, so org names do not leak).

The request carries ``Idempotency-Key: K`` and
``X-Trace-Signature: sha256=<hex HMAC-SHA256(secret, K + "\\n" + body)>``, with the job's
secret from ``TRACE_SOURCE_<JOB>_WEBHOOK_SECRET`` (environment only, never YAML; the key is
signed too, so a captured body cannot be replayed under a fresh key). Checks, in order, each
refusing with ``{"error": {"code", "message"}}``, writing nothing but an audit row
(``state.audit_events``, actor ``webhook``): body over
``TRACE_SOURCE_WEBHOOK_MAX_BYTES`` (413 ``body_too_large``), no key (400), no secret configured
for the job (404 ``webhook_not_configured``), a bad signature (401 ``bad_signature``), then
``sources.trigger``'s own refusals. Accepted: 202 with the source event and task ids (200 with
``created: false`` for a repeat of an earlier delivery).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from typing import Any

from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from trace_core.errors import NotFound, SourceRejected, TraceError
from trace_core.settings import Settings, source_webhook_secret
from trace_core.sources.trigger import Triggered, check_key, trigger
from trace_core.tenancy import org_by_name, record_event, tenant_scope

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "x-trace-signature"
KEY_HEADER = "idempotency-key"
PATH = "/v1/sources/{job}/webhook"
ORG_PATH = "/v1/orgs/{org}/sources/{job}/webhook"  # the same, for the org named in the path


def signature(secret: bytes, key: str, body: bytes) -> str:
    """The header value a sender puts in ``X-Trace-Signature``."""
    mac = hmac.new(secret, key.encode() + b"\n" + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify(secret: bytes | None, key: str, body: bytes, header: str | None) -> None:
    """Raise ``SourceRejected`` unless ``header`` signs ``key`` and ``body`` with ``secret``."""
    if secret is None:
        raise SourceRejected(
            "no webhook secret is configured for this job",
            code="webhook_not_configured",
            status=404,
        )
    if not header or not hmac.compare_digest(header.strip(), signature(secret, key, body)):
        raise SourceRejected(
            "the request signature does not match", code="bad_signature", status=401
        )


async def _read_capped(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    too_big = SourceRejected(
        f"the body is larger than {max_bytes} bytes", code="body_too_large", status=413
    )
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def accept(
    settings: Settings,
    pool: ConnectionPool[Any],
    job: str,
    key: str | None,
    body: bytes,
    sig: str | None,
    org: str | None = None,
) -> Triggered:
    """Verify one delivery and trigger the run (blocking; the route runs it in a thread):
    in the settings' org, or in the org named ``org`` (the org-aware route)."""
    if key is None:
        raise SourceRejected(
            "the Idempotency-Key header is required", code="bad_idempotency_key", status=400
        )
    check_key(key)
    verify(source_webhook_secret(job, org=org), key, body, sig)
    with pool.connection() as conn:
        org_id: str | uuid.UUID = settings.org_id
        if org is not None:
            try:
                org_id = org_by_name(conn, org).org_id
            except NotFound:  # a secret for an org that does not exist: as if none
                raise SourceRejected(
                    "no webhook secret is configured for this job",
                    code="webhook_not_configured",
                    status=404,
                ) from None
        # as the tenant role with the org set: row-level security applies to the trigger
        with tenant_scope(conn, org_id):
            return trigger(
                conn,
                org_id,
                job,
                "webhook",
                idempotency_key=key,
                body=body,
                max_attempts=settings.max_attempts,
            )


def _audit_refusal(pool: ConnectionPool[Any], exc: SourceRejected, where: str) -> None:
    """One ``state.audit_events`` row per refused delivery (the sender is not known: no org);
    a failure to record is logged and never changes the answer."""
    try:
        with pool.connection() as conn:
            record_event(
                conn,
                org_id=None,
                actor="webhook",
                action="POST webhook",
                outcome="refused",
                detail=f"{exc.status} {exc.code} {where}",
            )
    except Exception:  # the refusal still goes out; the log says the audit row is missing
        log.exception("webhook audit row not written", extra={"code": exc.code})


def webhook_routes(settings: Settings) -> list[BaseRoute]:
    """The source routes to mount on the Query Service app (its state pool serves them)."""

    async def webhook(request: Request) -> JSONResponse:
        job = request.path_params["job"]
        org = request.path_params.get("org")
        try:
            body = await _read_capped(request, settings.source_webhook_max_bytes)
            got = await run_in_threadpool(
                accept,
                settings,
                request.app.state.service.state,
                job,
                request.headers.get(KEY_HEADER),
                body,
                request.headers.get(SIGNATURE_HEADER),
                org,
            )
        except SourceRejected as exc:
            log.info("webhook refused", extra={"job": job, "code": exc.code})
            where = f"job={job}" + (f" org={org}" if org else "")
            await run_in_threadpool(_audit_refusal, request.app.state.service.state, exc, where)
            return JSONResponse(
                {"error": {"code": exc.code, "message": exc.message}}, status_code=exc.status
            )
        except TraceError as exc:
            log.warning("webhook failed", extra={"job": job, "code": exc.code})
            return JSONResponse(
                {"error": {"code": "unavailable", "message": "try again later"}}, status_code=503
            )
        return JSONResponse(got.as_json(), status_code=202 if got.created else 200)

    return [
        Route(PATH, webhook, methods=["POST"]),
        Route(ORG_PATH, webhook, methods=["POST"]),
    ]
