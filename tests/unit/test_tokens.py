"""User and task capability tokens: signing, verification, key file, rotation overlap."""

from __future__ import annotations

import json
import stat
import time
import uuid
from pathlib import Path

import jwt
import pytest

from trace_core.errors import TokenInvalid
from trace_core.query import tokens
from trace_core.query.tokens import (
    DatasetPin,
    issue_task_token,
    issue_user_token,
    key_file,
    load_keys,
    verify_task_token,
    verify_user_token,
)
from trace_core.settings import Settings

TASK_ID = uuid.UUID("00000000-0000-0000-0000-0000000000aa")
PIN = DatasetPin(
    dataset_uuid=uuid.UUID("6f8b4b60-1e53-51d1-807c-93fad2c5ac95"),
    dataset_version=uuid.UUID("7cd990ce-fc2c-52be-8659-23aef369b203"),
    manifest_key="cryo/143/6f8b/0_5000/7cd9/_manifest.json",
)


@pytest.fixture
def cfg(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path)


def test_key_file_is_generated_once_and_private(cfg: Settings) -> None:
    keys = load_keys(cfg)
    path = key_file(cfg)
    assert list(keys) == ["k1"] and len(keys["k1"]) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keys(cfg) == keys
    assert json.loads(path.read_text()) == keys


def test_user_token_round_trip(cfg: Settings) -> None:
    token = issue_user_token(cfg, sub="user:alice", datasets=["blocks", "logs"])
    claims = verify_user_token(cfg, token)
    assert claims.sub == "user:alice"
    assert str(claims.org_id) == cfg.org_id
    assert claims.datasets == ("blocks", "logs")
    assert claims.grants("blocks") and not claims.grants("transactions")
    assert jwt.get_unverified_header(token)["kid"] == "k1"
    everything = verify_user_token(cfg, issue_user_token(cfg, sub="user:bob"))
    assert everything.datasets == "all" and everything.grants("anything")


def test_task_token_round_trip(cfg: Settings) -> None:
    token = issue_task_token(cfg, TASK_ID, 3, [PIN], ttl=60)
    claims = verify_task_token(cfg, token)
    assert (claims.task_id, claims.attempt, claims.datasets) == (TASK_ID, 3, (PIN,))
    assert claims.expires_at - int(time.time()) <= 60
    as_mapping = issue_task_token(cfg, TASK_ID, 3, [PIN.model_dump(mode="json")])
    assert verify_task_token(cfg, as_mapping).datasets == (PIN,)


def test_audiences_do_not_mix(cfg: Settings) -> None:
    with pytest.raises(TokenInvalid):
        verify_task_token(cfg, issue_user_token(cfg, sub="user:alice"))
    with pytest.raises(TokenInvalid):
        verify_user_token(cfg, issue_task_token(cfg, TASK_ID, 1, [PIN]))


def test_expired_token_is_refused(cfg: Settings) -> None:
    token = issue_user_token(cfg, sub="user:alice", ttl=5, now=time.time() - 3600)
    with pytest.raises(TokenInvalid, match="expired"):
        verify_user_token(cfg, token)


def test_tampered_and_foreign_tokens_are_refused(cfg: Settings) -> None:
    token = issue_user_token(cfg, sub="user:alice", datasets=["blocks"])
    header, body, sig = token.split(".")
    forged_body = jwt.utils.base64url_encode(
        json.dumps(
            {**jwt.decode(token, options={"verify_signature": False}), "datasets": "all"}
        ).encode()
    ).decode()
    for bad in (
        f"{header}.{forged_body}.{sig}",
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        jwt.encode(
            {
                "sub": "user:x",
                "org_id": cfg.org_id,
                "datasets": "all",
                "exp": time.time() + 60,
                "iat": time.time(),
                "iss": cfg.jwt_issuer,
                "aud": "trace.user",
            },
            "wrong-secret-wrong-secret-wrong-secret",
            algorithm="HS256",
            headers={"kid": "k1"},
        ),
        jwt.encode({"sub": "user:x"}, "", algorithm="none"),
        "not-a-jwt",
        "",
    ):
        with pytest.raises(TokenInvalid):
            verify_user_token(cfg, bad)


def test_wrong_issuer_is_refused(cfg: Settings) -> None:
    token = issue_user_token(cfg.model_copy(update={"jwt_issuer": "someone-else"}), sub="user:a")
    with pytest.raises(TokenInvalid):
        verify_user_token(cfg, token)


def test_rotation_overlap(cfg: Settings) -> None:
    old = issue_user_token(cfg, sub="user:alice")
    # step 1: every verifier also accepts k2
    staged = cfg.model_copy(update={"jwt_next_kid": "k2"})
    assert set(load_keys(staged)) == {"k1", "k2"}
    assert verify_user_token(staged, old).sub == "user:alice"
    # step 2: k2 signs, k1 still accepted until old tokens expire
    rotated = cfg.model_copy(update={"jwt_kid": "k2", "jwt_next_kid": "k1"})
    new = issue_task_token(rotated, TASK_ID, 1, [PIN])
    assert jwt.get_unverified_header(new)["kid"] == "k2"
    assert verify_user_token(rotated, old).sub == "user:alice"
    assert verify_task_token(staged, new).task_id == TASK_ID
    # step 3: k1 retired; its tokens are refused
    retired = cfg.model_copy(update={"jwt_kid": "k2", "jwt_next_kid": None})
    assert verify_task_token(retired, new).attempt == 1
    with pytest.raises(TokenInvalid, match="unknown key"):
        verify_user_token(retired, old)


def test_a_verified_token_is_remembered_only_while_it_would_verify(
    cfg: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verified tokens are remembered (the service verifies the same bearer per query), but a
    remembered one is refused once it expires or its kid's secret changes."""
    token = issue_user_token(cfg, sub="user:alice", ttl=60)
    verified = tokens.VerifiedTokens()
    assert verify_user_token(cfg, token, verified).sub == "user:alice"
    assert len(verified) == 1
    monkeypatch.setattr(tokens.jwt, "decode", None)  # a second verification decodes nothing
    assert verify_user_token(cfg, token, verified).sub == "user:alice"  # remembered
    real = time.time
    monkeypatch.setattr(tokens.time, "time", lambda: real() + 60 + tokens.LEEWAY_SECONDS + 1)
    with pytest.raises(TokenInvalid, match="expired"):
        verify_user_token(cfg, token, verified)
    monkeypatch.undo()
    path = key_file(cfg)
    path.write_text(json.dumps({"k1": "another-secret-another-secret-another-secret"}))
    with pytest.raises(TokenInvalid, match="invalid"):
        verify_user_token(cfg, token, verified)


def test_task_token_with_inconsistent_subject_is_refused(cfg: Settings) -> None:
    secret = load_keys(cfg)["k1"]
    now = int(time.time())
    forged = jwt.encode(
        {
            "sub": "task:someone-else",
            "org_id": cfg.org_id,
            "task_id": str(TASK_ID),
            "attempt": 1,
            "datasets": [],
            "exp": now + 60,
            "iat": now,
            "iss": cfg.jwt_issuer,
            "aud": "trace.task",
        },
        secret,
        algorithm="HS256",
        headers={"kid": "k1"},
    )
    with pytest.raises(TokenInvalid):
        verify_task_token(cfg, forged)
