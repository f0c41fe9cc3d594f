"""``trace-lite org|user|key`` and ``--org``/``--api-key`` on a real Postgres: keys print once
on the last line, bad input is refused with a clear error and an audit row and changes
nothing, and tenant commands with ``--org`` run as that org's tenant."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tests.integration.test_query_embedded import no_service  # noqa: F401
from tests.integration.test_query_service import blocks_table, publish
from trace_core.cli.main import cli
from trace_core.cli.tenancy import parse_expires
from trace_core.db.connection import connect
from trace_core.errors import ConfigError
from trace_core.runtime import Runtime
from trace_core.storage.local import LocalStore

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _count(rt: Runtime, sql: str, *params: Any) -> int:
    with connect(rt.dbs.state_url) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def _audit(rt: Runtime) -> list[tuple[str, str]]:
    with connect(rt.dbs.state_url) as conn:
        rows = conn.execute(
            "SELECT action, outcome FROM state.audit_events ORDER BY event_id"
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def test_parse_expires() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_expires("30d", now) == now + timedelta(days=30)
    assert parse_expires("12h", now) == now + timedelta(hours=12)
    assert parse_expires("2027-01-01", now) == datetime(2027, 1, 1, tzinfo=UTC)
    with pytest.raises(ConfigError, match="--expires"):
        parse_expires("soon", now)


def test_org_user_key_commands(trace_env: Runtime) -> None:
    rt = trace_env
    made = run("org", "create", "acme")
    assert made.exit_code == 0 and "name=acme created" in made.stdout
    user = run("user", "add", "ann@example.com", "--org", "acme", "--role", "admin")
    assert user.exit_code == 0 and "role=admin" in user.stdout

    created = run("key", "create", "--org", "acme", "--role", "editor", "--expires", "30d")
    assert created.exit_code == 0, created.stderr
    lines = created.stdout.strip().splitlines()
    secret = lines[-1]
    assert secret.startswith("trk_") and " " not in secret and "role=editor" in lines[0]
    assert secret not in " ".join(lines[:-1])
    listed = json.loads(run("key", "list", "--org", "acme", "--json").stdout)["keys"]
    assert [(k["prefix"], k["role"], k["state"]) for k in listed] == [
        (secret[:12], "editor", "active")
    ]
    assert secret not in json.dumps(listed)
    # the deployment's own org has no keys
    assert json.loads(run("key", "list", "--json").stdout)["keys"] == []

    key_id = lines[0].split()[0].removeprefix("key_id=")
    # another org cannot revoke it (404-style, nothing changed)
    assert run("org", "create", "beta").exit_code == 0
    other = run("key", "revoke", key_id, "--org", "beta")
    assert other.exit_code == 1 and "no api key" in other.stderr
    revoked = run("key", "revoke", key_id, "--org", "acme")
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout
    again = json.loads(run("key", "list", "--org", "acme", "--json").stdout)["keys"]
    assert again[0]["state"] == "revoked"
    assert _audit(rt) == [
        ("org.create", "ok"),
        ("user.add", "ok"),
        ("key.create", "ok"),
        ("org.create", "ok"),
        ("key.revoke", "refused"),
        ("key.revoke", "ok"),
    ]


BAD_INPUT = [
    (["key", "create", "--org", "acme", "--role", "god"], "unknown role 'god'"),
    (["key", "create", "--org", "nope", "--role", "viewer"], "no org named 'nope'"),
    (["key", "create", "--org", "acme", "--role", "viewer", "--expires", "x"], "--expires"),
    (["key", "create", "--org", "acme", "--role", "viewer", "--expires", "2001-01-01"], "past"),
    (["key", "revoke", "not-a-uuid", "--org", "acme"], "not a key id"),
    (["key", "revoke", "00000000-0000-0000-0000-000000000009", "--org", "acme"], "no api key"),
    (["org", "create", "Bad Name"], "invalid org name"),
    (["org", "create", "acme"], "already exists"),
    (["org", "create", "ac-me"], "already exists"),  # ac_me: one Dagster key prefix
    (["user", "add", "nobody", "--org", "acme"], "invalid email"),
    (["user", "add", "ann@example.com", "--org", "nope"], "no org named 'nope'"),
]


def test_bad_input_is_refused_audited_and_changes_nothing(trace_env: Runtime) -> None:
    rt = trace_env
    assert run("org", "create", "acme").exit_code == 0
    assert run("org", "create", "ac_me").exit_code == 0
    tables = ("orgs", "users", "api_keys", "org_role_memberships")

    def counts() -> list[int]:
        return [_count(rt, f"SELECT count(*) FROM state.{t}") for t in tables]  # noqa: S608

    before = counts()
    for args, message in BAD_INPUT:
        refusals = len(_audit(rt))
        result = run(*args)
        assert result.exit_code != 0 and message in result.stderr, (args, result.stderr)
        assert counts() == before, args
        audit = _audit(rt)
        assert len(audit) == refusals + 1 and audit[-1][1] == "refused", args


def test_tenant_commands_with_org(trace_env: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """apply/status/pause with --org act on that org's jobs alone, as trace_tenant."""
    rt = trace_env
    monkeypatch.setenv("TRACE_RPC_POOL_DEMO_URL", "http://127.0.0.1:9")
    job = ROOT / "examples" / "chain_sync.demo.yaml"
    assert run("org", "create", "acme").exit_code == 0
    applied = run("apply", "--file", str(job), "--org", "acme")
    assert applied.exit_code == 0, applied.stderr
    assert _count(rt, "SELECT count(*) FROM state.chain_sync_jobs") == 1
    acme = _count(
        rt,
        "SELECT count(*) FROM state.chain_sync_jobs j JOIN state.orgs o USING (org_id)"
        " WHERE o.name = 'acme'",
    )
    assert acme == 1
    assert "demo" in run("status", "--org", "acme", "--json").stdout
    mine = run("status", "--json").stdout  # the default org sees no job
    assert '"jobs": []' in mine
    missing = run("pause", "--job", "demo")  # not in the default org
    assert missing.exit_code != 0
    assert run("--org", "acme", "pause", "--job", "demo").exit_code == 0
    alert = ROOT / "examples" / "alerts" / "large_transfer.yaml"
    applied_alert = run("--org", "acme", "alerts", "apply", "--file", str(alert))
    assert applied_alert.exit_code == 0, applied_alert.stderr
    assert "large_transfer" in run("--org", "acme", "alerts", "list", "--json").stdout
    assert "large_transfer" not in run("alerts", "list", "--json").stdout
    unknown = run("status", "--org", "nope")
    assert unknown.exit_code == 1 and "no org named 'nope'" in unknown.stderr
    assert _audit(rt)[-1] == ("org.resolve", "refused")


def test_query_with_api_key(
    trace_env: Runtime,
    no_service: int,  # noqa: F811
    tmp_path: Path,
) -> None:
    rt = trace_env
    assert run("org", "create", "acme").exit_code == 0
    secret = run("key", "create", "--org", "acme", "--role", "viewer").stdout.splitlines()[-1]
    with connect(rt.dbs.state_url) as conn:
        acme = conn.execute("SELECT org_id FROM state.orgs WHERE name = 'acme'").fetchone()
    assert acme is not None
    store = LocalStore(rt.settings.resolved_home() / "objects")
    acme_settings = rt.settings.model_copy(update={"org_id": str(acme[0])})
    publish(acme_settings, store, tmp_path, blocks_table(0, 30))
    publish(rt.settings, store, tmp_path, blocks_table(0, 70))
    sql = "SELECT count(*) AS n FROM blocks"
    assert "70" in run("query", "--sql", sql, "--json").stdout  # the deployment's org
    keyed = run("query", "--sql", sql, "--json", "--api-key", secret)
    assert keyed.exit_code == 0, keyed.stderr
    assert '"row_count": 1' in keyed.stdout and "30" in keyed.stdout
    assert "30" in run("query", "--sql", sql, "--json", "--org", "acme").stdout
    bad = run("query", "--sql", sql, "--api-key", "trk_" + "1" * 48)
    assert bad.exit_code == 1 and "unknown api key" in bad.stderr
    assert _audit(rt)[-1] == ("auth", "refused")
