"""Bearer tokens for the Query Service: user tokens and task capability tokens (HS256 JWTs).

Secrets live in a JSON key file (``{kid: secret}``, mode 0600, default
``$TRACE_HOME/keys.json``); a missing key id is generated on first use. With more than one host
(the AWS profile) every process must hold the same keys: ``TRACE_JWT_KEYS`` carries the same
JSON (from a secrets manager) and replaces the file; nothing is generated then. New tokens are signed
with ``settings.jwt_kid``; tokens signed with it or with ``settings.jwt_next_kid`` verify, which
gives a rotation overlap: add the next kid everywhere, then make it the signing kid.

- User tokens (aud ``trace.user``): ``sub``, ``org_id`` and ``datasets``, either ``"all"`` or a
  list of dataset names (stream keys).
- Task capability tokens (aud ``trace.task``, ``sub = task:{task_id}``): ``org_id``,
  ``task_id``, ``attempt`` and the exact dataset versions pinned for the task. Whether the
  attempt is still current is checked against Postgres state by the service, not here.

Verification failures raise ``TokenInvalid`` and never echo the token.
"""

from __future__ import annotations

import collections
import fcntl
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt
from pydantic import BaseModel, ConfigDict, ValidationError

from trace_core.errors import ConfigError, TokenInvalid
from trace_core.settings import Settings

log = logging.getLogger(__name__)

USER_AUDIENCE = "trace.user"
TASK_AUDIENCE = "trace.task"
ALGORITHM = "HS256"
LEEWAY_SECONDS = 10


class DatasetPin(BaseModel):
    """One dataset version a task may read, pinned by id and manifest key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset_uuid: uuid.UUID
    dataset_version: uuid.UUID
    manifest_key: str

    @classmethod
    def of(cls, version: Any) -> DatasetPin:
        """The pin of a registered version (e.g. a ``datasets.registry.VersionRecord``)."""
        return cls(
            dataset_uuid=version.dataset_uuid,
            dataset_version=version.dataset_version,
            manifest_key=version.manifest_key,
        )


@dataclass(frozen=True)
class UserClaims:
    sub: str
    org_id: uuid.UUID
    datasets: Literal["all"] | tuple[str, ...]
    expires_at: int

    def grants(self, name: str) -> bool:
        return self.datasets == "all" or name in self.datasets


@dataclass(frozen=True)
class TaskClaims:
    org_id: uuid.UUID
    task_id: uuid.UUID
    attempt: int
    datasets: tuple[DatasetPin, ...]
    expires_at: int


class _UserBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sub: str
    org_id: uuid.UUID
    datasets: Literal["all"] | list[str]
    exp: int


class _TaskBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sub: str
    org_id: uuid.UUID
    task_id: uuid.UUID
    attempt: int
    datasets: list[DatasetPin]
    exp: int


# --- keys --------------------------------------------------------------------------------


def key_file(settings: Settings) -> Path:
    return settings.jwt_key_file or settings.resolved_home() / "keys.json"


def load_keys(settings: Settings) -> dict[str, str]:
    """The accepted keys ``{kid: secret}`` (signing kid first): from ``TRACE_JWT_KEYS`` when
    set, else from the key file, generating missing ones there.

    Raises ``ConfigError`` when the key file or ``TRACE_JWT_KEYS`` is malformed or unreadable,
    or when ``TRACE_JWT_KEYS`` lacks a wanted kid.
    """
    wanted = [settings.jwt_kid] + ([settings.jwt_next_kid] if settings.jwt_next_kid else [])
    if settings.jwt_keys is not None:
        given = _parse_keys(settings.jwt_keys.get_secret_value())
        missing = [kid for kid in wanted if kid not in given]
        if missing:
            raise ConfigError(
                f"TRACE_JWT_KEYS has no key for kid {', '.join(map(repr, missing))}",
                field="jwt_keys",
            )
        return {kid: given[kid] for kid in wanted}
    path = key_file(settings)
    stored = _read_key_file(path)
    if any(kid not in stored for kid in wanted):
        stored = _add_keys(path, wanted)
    return {kid: stored[kid] for kid in wanted}


_cache: dict[Path, tuple[tuple[int, int], dict[str, str]]] = {}
# HS256 wants a key of at least 256 bits; generated keys are 43 URL-safe characters.
MIN_SECRET_CHARS = 32


def _parse_keys(text: str) -> dict[str, str]:
    """``TRACE_JWT_KEYS``'s JSON; errors never echo it (it is the secret)."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigError("TRACE_JWT_KEYS is not valid JSON", field="jwt_keys") from None
    if (
        not isinstance(data, dict)
        or not data
        or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in data.items())
    ):
        raise ConfigError("TRACE_JWT_KEYS must be a JSON object of {kid: secret}", field="jwt_keys")
    short = sorted(kid for kid, secret in data.items() if len(secret) < MIN_SECRET_CHARS)
    if short:
        raise ConfigError(
            f"TRACE_JWT_KEYS secrets must be at least {MIN_SECRET_CHARS} characters "
            f"(HS256); too short: {', '.join(map(repr, short))}",
            field="jwt_keys",
        )
    return data


def _read_key_file(path: Path) -> dict[str, str]:
    """The key file's contents, re-read only when its mtime or size changed."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read key file: {exc.strerror}", file=str(path)) from exc
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _cache.get(path)
    if cached is not None and cached[0] == stamp:
        return dict(cached[1])
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read key file: {exc.strerror}", file=str(path)) from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError("key file is not valid JSON", file=str(path)) from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in data.items()
    ):
        raise ConfigError("key file must be a JSON object of {kid: secret}", file=str(path))
    _cache[path] = (stamp, dict(data))
    return data


def _add_keys(path: Path, kids: Iterable[str]) -> dict[str, str]:
    """Generate missing kids under an exclusive lock (concurrent first users agree)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = _read_key_file(path)
        missing = [kid for kid in kids if kid not in stored]
        if missing:
            for kid in missing:
                stored[kid] = secrets.token_urlsafe(32)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(stored, fh, indent=2, sort_keys=True)
            os.replace(tmp, path)
            log.info("generated jwt signing keys", extra={"kids": missing, "key_file": str(path)})
    return stored


# --- issue -------------------------------------------------------------------------------


def issue_user_token(
    settings: Settings,
    *,
    sub: str,
    datasets: Literal["all"] | Sequence[str] = "all",
    org_id: uuid.UUID | str | None = None,
    ttl: int | None = None,
    now: float | None = None,
) -> str:
    """A signed user token for ``sub`` in ``org_id`` (default: the settings' org)."""
    body: dict[str, Any] = {
        "sub": sub,
        "org_id": str(org_id or settings.org_id),
        "datasets": datasets if datasets == "all" else list(datasets),
    }
    return _sign(settings, USER_AUDIENCE, body, ttl or settings.user_token_ttl_seconds, now)


def issue_task_token(
    settings: Settings,
    task_id: uuid.UUID,
    attempt: int,
    grants: Iterable[DatasetPin | Mapping[str, Any]],
    ttl: int | None = None,
    *,
    org_id: uuid.UUID | str | None = None,
    now: float | None = None,
) -> str:
    """A capability token for one attempt of one task, pinned to ``grants`` (pins or
    ``{dataset_uuid, dataset_version, manifest_key}`` mappings; ``DatasetPin.of(record)``)."""
    body = {
        "sub": f"task:{task_id}",
        "org_id": str(org_id or settings.org_id),
        "task_id": str(task_id),
        "attempt": attempt,
        "datasets": [DatasetPin.model_validate(pin).model_dump(mode="json") for pin in grants],
    }
    return _sign(settings, TASK_AUDIENCE, body, ttl or settings.task_token_ttl_seconds, now)


def _sign(
    settings: Settings, audience: str, body: dict[str, Any], ttl: int, now: float | None
) -> str:
    issued = int(time.time() if now is None else now)
    claims = {
        **body,
        "iss": settings.jwt_issuer,
        "aud": audience,
        "iat": issued,
        "exp": issued + ttl,
    }
    kid = settings.jwt_kid
    secret = load_keys(settings)[kid]
    return jwt.encode(claims, secret, algorithm=ALGORITHM, headers={"kid": kid})


# --- verify ------------------------------------------------------------------------------


def verify_user_token(
    settings: Settings, token: str, verified: VerifiedTokens | None = None
) -> UserClaims:
    """Claims of a valid user token (remembered in ``verified`` if given). Raises
    ``TokenInvalid``."""
    payload = _decode(settings, token, USER_AUDIENCE, verified)
    try:
        body = _UserBody.model_validate(payload)
    except ValidationError as exc:
        raise TokenInvalid("token claims are malformed") from exc
    datasets: Literal["all"] | tuple[str, ...] = (
        "all" if body.datasets == "all" else tuple(body.datasets)
    )
    return UserClaims(sub=body.sub, org_id=body.org_id, datasets=datasets, expires_at=body.exp)


def verify_task_token(
    settings: Settings, token: str, verified: VerifiedTokens | None = None
) -> TaskClaims:
    """Claims of a valid task capability token (remembered in ``verified`` if given). Raises
    ``TokenInvalid``."""
    payload = _decode(settings, token, TASK_AUDIENCE, verified)
    try:
        body = _TaskBody.model_validate(payload)
    except ValidationError as exc:
        raise TokenInvalid("token claims are malformed") from exc
    if body.sub != f"task:{body.task_id}" or body.attempt < 1:
        raise TokenInvalid("token claims are malformed")
    return TaskClaims(
        org_id=body.org_id,
        task_id=body.task_id,
        attempt=body.attempt,
        datasets=tuple(body.datasets),
        expires_at=body.exp,
    )


class VerifiedTokens:
    """Tokens already verified: (token, audience, issuer) -> (kid, secret, payload), the
    least recently used dropped past ``size``. A hit still checks that its kid's secret is
    accepted as it was (rotation, a changed secret) and the expiry; the signature, header and
    claims it was verified with cannot have changed (the token is the key). A service owns
    one (``QueryService``); thread-safe."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._seen: collections.OrderedDict[
            tuple[str, str, str], tuple[str, str, dict[str, Any]]
        ] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def get(self, key: tuple[str, str, str], keys: Mapping[str, str]) -> dict[str, Any] | None:
        with self._lock:
            hit = self._seen.get(key)
            if hit is not None:
                self._seen.move_to_end(key)
        if hit is None or keys.get(hit[0]) != hit[1]:
            return None
        if int(hit[2]["exp"]) <= time.time() - LEEWAY_SECONDS:
            raise TokenInvalid("token has expired")
        return hit[2]

    def put(
        self, key: tuple[str, str, str], kid: str, secret: str, payload: dict[str, Any]
    ) -> None:
        with self._lock:
            self._seen[key] = (kid, secret, payload)
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)


def _decode(
    settings: Settings, token: str, audience: str, verified: VerifiedTokens | None
) -> dict[str, Any]:
    keys = load_keys(settings)
    cache_key = (token, audience, settings.jwt_issuer)
    if verified is not None and (hit := verified.get(cache_key, keys)) is not None:
        return hit
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenInvalid("token is malformed") from exc
    kid = header.get("kid")
    if header.get("alg") != ALGORITHM or not isinstance(kid, str) or kid not in keys:
        raise TokenInvalid("token is signed with an unknown key")
    try:
        payload: dict[str, Any] = jwt.decode(
            token,
            keys[kid],
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=settings.jwt_issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenInvalid("token has expired") from exc
    except jwt.PyJWTError as exc:
        raise TokenInvalid("token is invalid") from exc
    if verified is not None:
        verified.put(cache_key, kid, keys[kid], payload)
    return payload
