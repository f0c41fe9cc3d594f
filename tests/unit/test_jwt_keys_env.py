"""TRACE_JWT_KEYS: hosts that share signing keys through the environment (a secrets manager)
instead of a key file; one host's tokens verify on another, and nothing is generated."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr

from trace_core.errors import ConfigError, TokenInvalid
from trace_core.query.tokens import (
    issue_task_token,
    key_file,
    load_keys,
    verify_task_token,
)
from trace_core.settings import Settings

SECRET_1, SECRET_2 = "first-secret-value-" + "a" * 24, "second-secret-value-" + "b" * 24
KEYS = json.dumps({"k1": SECRET_1, "k2": SECRET_2})


def _host(tmp_path: Path, name: str, keys: str | None = KEYS, **kw: object) -> Settings:
    return Settings(
        home=tmp_path / name,
        jwt_keys=SecretStr(keys) if keys is not None else None,
        **kw,  # type: ignore[arg-type]
    )


def test_hosts_with_the_same_keys_verify_each_others_tokens(tmp_path: Path) -> None:
    worker, query_service = _host(tmp_path, "worker"), _host(tmp_path, "query")
    task_id = uuid.uuid4()
    token = issue_task_token(worker, task_id, 2, [])
    claims = verify_task_token(query_service, token)
    assert (claims.task_id, claims.attempt) == (task_id, 2)
    # no key file was written on either host
    assert not key_file(worker).exists() and not key_file(query_service).exists()


def test_a_host_with_its_own_generated_key_is_refused(tmp_path: Path) -> None:
    token = issue_task_token(_host(tmp_path, "stray", keys=None), uuid.uuid4(), 1, [])
    with pytest.raises(TokenInvalid):
        verify_task_token(_host(tmp_path, "query"), token)


def test_rotation_overlap_from_the_environment(tmp_path: Path) -> None:
    old = _host(tmp_path, "old")
    staged = _host(tmp_path, "staged", jwt_next_kid="k2")
    assert list(load_keys(staged)) == ["k1", "k2"]
    token = issue_task_token(old, uuid.uuid4(), 1, [])
    assert verify_task_token(staged, token).attempt == 1


@pytest.mark.parametrize(
    ("keys", "kid", "message"),
    [
        ("not json", "k1", "not valid JSON"),
        ('["k1"]', "k1", "JSON object of {kid: secret}"),
        ('{"k1": ""}', "k1", "JSON object of {kid: secret}"),
        ("{}", "k1", "JSON object of {kid: secret}"),
        ('{"k1": "first-secret-value-short"}', "k1", "at least 32 characters"),
        (KEYS, "k9", "no key for kid 'k9'"),
    ],
)
def test_bad_keys_name_the_setting_and_never_echo_secrets(
    tmp_path: Path, keys: str, kid: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_keys(_host(tmp_path, "bad", keys=keys, jwt_kid=kid))
    assert message in str(err.value)
    assert err.value.field == "jwt_keys"
    assert "secret-value" not in str(err.value)
    assert not key_file(_host(tmp_path, "bad", keys=keys)).exists()
