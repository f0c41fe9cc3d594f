"""The HTTP API (trace_core.api) over real HTTP (uvicorn) on the Query Service app, against the
embedded Postgres with two orgs: roles, every refusal (401 wrong/expired/revoked key and
tampered token, 403 role too low, 404 for another org's object, 409, 413, 422, 429) answered
in the JSON error shape, recorded in ``state.audit_events`` and changing nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from openapi_spec_validator import validate

from tests.integration.test_query_service import blocks_table, publish, serving
from trace_core.api import api_routes
from trace_core.db.connection import Databases, connect
from trace_core.query.app import create_app
from trace_core.query.client import local_user_token
from trace_core.settings import Settings
from trace_core.storage.local import LocalStore
from trace_core.tenancy import create_key, create_org

JOB = """kind: chain_sync
name: src
chain_id: 1
mode: {kind: fixed_target, from_block: 0, to_block: 200}
streams:
  blocks: {cryo_dataset_name: blocks, rpc_pool: p, chunk_size: 100, max_inflight: 1}
"""
TRANSFORM = """kind: transform
name: gas
job: src
inputs: [blocks]
code: {sql: "SELECT block_number, gas_used FROM blocks WHERE gas_used > 21050"}
output: gas_out
trigger: {on_input: false, manual: true}
"""
ALERT = """kind: alert
name: big
job: src
reads: [blocks]
condition: "SELECT block_number FROM blocks WHERE gas_used > {gas}"
trigger: {{on_commit: true}}
dedupe_key: "big:{{block_number}}"
severity: {severity}
channels:
  - webhook: {{url: "https://hooks.example.com/T/secret-token"}}
"""


class Org:
    """An org and one key per role (secrets), made directly through trace_core.tenancy."""

    def __init__(self, conn: psycopg.Connection[Any], name: str) -> None:
        self.org = create_org(conn, name)
        self.keys = {
            role: create_key(conn, self.org.org_id, role)[1]
            for role in ("viewer", "editor", "admin", "owner")
        }

    def h(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


@pytest.fixture
def orgs(dbs: Databases) -> tuple[Org, Org]:
    with connect(dbs.state_url, autocommit=True) as conn:
        return Org(conn, "acme"), Org(conn, "beta")


@pytest.fixture
def client(settings: Settings, dbs: Databases, trace_home: Path) -> Iterator[httpx.Client]:
    store = LocalStore(trace_home / "objects")
    app = create_app(settings, dbs, store, hot_sources=None, routes=api_routes(settings))
    with serving(app) as c:
        yield c


def audit(dbs: Databases) -> list[tuple[Any, ...]]:
    """(org_id, actor, action, outcome, detail) of every API audit row, oldest first."""
    with connect(dbs.state_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT org_id, actor, action, outcome, detail FROM state.audit_events"
            " WHERE action LIKE '% /%' ORDER BY event_id"
        ).fetchall()


def jobs_of(dbs: Databases) -> list[tuple[Any, ...]]:
    with connect(dbs.state_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT org_id, name, enabled FROM state.chain_sync_jobs ORDER BY name"
        ).fetchall()


def refused(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"code", "message"}
    if code is not None:
        assert err["code"] == code, err
    return dict(err)


def test_jobs_and_alerts_roles_and_org_isolation(
    client: httpx.Client, orgs: tuple[Org, Org], dbs: Databases
) -> None:
    acme, beta = orgs
    # authentication: none, malformed, unknown, tampered JWT-shaped -> 401, each audited
    refused(client.get("/v1/jobs"), 401, "unauthenticated")
    refused(client.get("/v1/jobs", headers={"Authorization": "Bearer nope"}), 401)
    forged = "trk_" + "0" * 48
    refused(client.get("/v1/jobs", headers={"Authorization": f"Bearer {forged}"}), 401)
    assert [row[3] for row in audit(dbs)] == ["refused"] * 3
    assert all(row[1] == "anonymous" and row[0] is None for row in audit(dbs))

    # a viewer cannot write: 403, audited under its org, nothing applied
    refused(client.post("/v1/jobs", content=JOB, headers=acme.h("viewer")), 403, "forbidden")
    assert jobs_of(dbs) == [] and audit(dbs)[-1][0] == acme.org.org_id

    # an editor applies (201), the same bytes again change nothing (200 unchanged)
    r = client.post("/v1/jobs", content=JOB, headers=acme.h("editor"))
    assert r.status_code == 201 and r.json()["result"] == "created", r.text
    r = client.post("/v1/jobs", content=JOB, headers=acme.h("editor"))
    assert r.status_code == 200 and r.json()["result"] == "unchanged"
    assert jobs_of(dbs) == [(acme.org.org_id, "src", True)]

    # bad YAML: 422 naming <body>:line: field, nothing written
    bad = JOB.replace("chunk_size: 100", "chunk_size: -5")
    err = refused(client.post("/v1/jobs", content=bad, headers=acme.h("editor")), 422)
    assert err["problems"][0]["line"] == 6 and "chunk_size" in err["problems"][0]["field"]
    assert err["message"].startswith("<body>:6:")
    # oversized body: 413
    huge = JOB + "#" + "x" * (300 * 1024)
    refused(client.post("/v1/jobs", content=huge, headers=acme.h("editor")), 413)

    # the other org sees nothing: lists are empty, names and ids answer 404 (never 403)
    assert client.get("/v1/jobs", headers=beta.h("viewer")).json() == {"jobs": []}
    job_id = client.get("/v1/jobs", headers=acme.h("viewer")).json()["jobs"][0]["id"]
    for path in ("/v1/jobs/src", f"/v1/jobs/{job_id}"):
        refused(client.get(path, headers=beta.h("owner")), 404, "not_found")
    refused(client.post("/v1/jobs/src/pause", headers=beta.h("owner")), 404)
    refused(client.delete("/v1/jobs/src", headers=beta.h("owner")), 404)
    # a body naming another org's job: as unknown (422 naming the line), nothing written
    refused(client.post("/v1/alerts", content=ALERT.format(gas=1, severity="info"),
                        headers=beta.h("editor")), 422)  # fmt: skip
    assert client.get("/v1/alerts", headers=acme.h("viewer")).json() == {"alerts": []}
    # beta applying a job of the same name gets its own job, acme's is untouched
    assert client.post("/v1/jobs", content=JOB, headers=beta.h("editor")).status_code == 201
    assert sorted(r[0] for r in jobs_of(dbs)) == sorted([acme.org.org_id, beta.org.org_id])

    # status, pause, resume
    status = client.get("/v1/jobs/src", headers=acme.h("viewer")).json()
    assert (
        status["kind"] == "chain_sync" and status["status"]["streams"][0]["dataset_key"] == "blocks"
    )
    assert client.post("/v1/jobs/src/pause", headers=acme.h("editor")).json()["enabled"] is False
    assert (acme.org.org_id, "src", False) in jobs_of(dbs)
    assert (beta.org.org_id, "src", True) in jobs_of(dbs)
    assert client.post("/v1/jobs/src/resume", headers=acme.h("editor")).json()["enabled"] is True

    # alerts: create, list, get, update, deliveries, delete; beta sees none of it
    a1 = ALERT.format(gas=21050, severity="warning")
    r = client.post("/v1/alerts", content=a1, headers=acme.h("editor"))
    assert r.status_code == 201, r.text
    listed = client.get("/v1/alerts", headers=acme.h("viewer")).json()["alerts"]
    assert [a["name"] for a in listed] == ["big"]
    assert "secret-token" not in str(listed)  # webhook URLs are redacted
    assert client.get("/v1/alerts", headers=beta.h("viewer")).json() == {"alerts": []}
    refused(client.get("/v1/alerts/big", headers=beta.h("viewer")), 404)
    refused(client.put("/v1/alerts/big", content=a1, headers=beta.h("editor")), 404)
    a2 = ALERT.format(gas=30000, severity="critical")
    r = client.put("/v1/alerts/big", content=a2, headers=acme.h("editor"))
    assert r.status_code == 200 and r.json()["result"] == "updated", r.text
    got = client.get("/v1/alerts/big", headers=acme.h("viewer")).json()
    assert got["definition"]["severity"] == "critical"
    renamed = a2.replace("name: big", "name: other")
    refused(client.put("/v1/alerts/big", content=renamed, headers=acme.h("editor")), 422)
    deliveries = client.get("/v1/alerts/big/deliveries", headers=acme.h("viewer"))
    assert deliveries.status_code == 200 and deliveries.json() == {"deliveries": []}
    refused(client.delete("/v1/alerts/big", headers=acme.h("viewer")), 403)
    assert client.delete("/v1/alerts/big", headers=acme.h("editor")).status_code == 200
    refused(client.get("/v1/alerts/big", headers=acme.h("viewer")), 404)

    # delete: refused while enabled (409), then gone; beta's job of the same name stays
    refused(client.delete("/v1/jobs/src", headers=acme.h("editor")), 409, "job_not_paused")
    client.post("/v1/jobs/src/pause", headers=acme.h("editor"))
    assert client.delete("/v1/jobs/src", headers=acme.h("editor")).status_code == 200
    assert jobs_of(dbs) == [(beta.org.org_id, "src", True)]

    # every refusal above left an audit row naming its status and code, never a secret
    rows = audit(dbs)
    details = " ".join(r[4] or "" for r in rows)
    assert (
        "403 forbidden" in details
        and "404 not_found" in details
        and "409 job_not_paused" in details
    )
    assert "413 body_too_large" in details and "422" in details
    assert not any(k in details for o in orgs for k in o.keys.values())


def test_keys_lifecycle_expiry_and_rate_limit(
    client: httpx.Client,
    orgs: tuple[Org, Org],
    dbs: Databases,
    settings: Settings,
    trace_home: Path,
) -> None:
    acme, beta = orgs
    # the OpenAPI document is served without a key, valid, and lists every route
    doc = client.get("/openapi.json").json()
    validate(doc)
    ops = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert ("POST", "/v1/jobs") in ops and ("DELETE", "/v1/keys/{key_id}") in ops
    assert ("POST", "/v1/jobs/{name}/trigger") in ops and ("PUT", "/v1/alerts/{name}") in ops
    assert doc["paths"]["/v1/keys"]["post"]["x-trace-role"] == "admin"
    schema = doc["paths"]["/v1/keys"]["post"]["responses"]["201"]["content"]
    assert schema["application/json"]["schema"] == {"$ref": "#/components/schemas/KeyCreated"}
    refused(client.post("/v1/keys", json={"role": "viewer"}, headers=acme.h("editor")), 403)
    refused(client.get("/v1/keys", headers=acme.h("editor")), 403)
    # an admin cannot mint an owner key
    refused(client.post("/v1/keys", json={"role": "owner"}, headers=acme.h("admin")), 403)
    refused(client.post("/v1/keys", json={"role": "god"}, headers=acme.h("admin")), 422)
    for when in ("2030-01-01T00:00:00", "2001-01-01T00:00:00Z"):  # no zone; in the past
        body = {"role": "viewer", "expires_at": when}
        refused(client.post("/v1/keys", json=body, headers=acme.h("admin")), 422)
    r = client.post("/v1/keys", json={"role": "viewer", "name": "ci"}, headers=acme.h("admin"))
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["secret"].startswith(made["prefix"]) and made["role"] == "viewer"
    new = {"Authorization": f"Bearer {made['secret']}"}
    assert client.get("/v1/whoami", headers=new).json()["org"] == "acme"
    keys = client.get("/v1/keys", headers=acme.h("admin")).json()["keys"]
    assert made["key_id"] in {k["key_id"] for k in keys}
    assert made["secret"] not in str(keys)
    # another org's admin cannot see or revoke it (404)
    assert made["key_id"] not in str(client.get("/v1/keys", headers=beta.h("admin")).json())
    refused(client.delete(f"/v1/keys/{made['key_id']}", headers=beta.h("owner")), 404)
    assert client.get("/v1/whoami", headers=new).status_code == 200
    # revoked: 401 from then on
    assert client.delete(f"/v1/keys/{made['key_id']}", headers=acme.h("admin")).status_code == 200
    refused(client.get("/v1/whoami", headers=new), 401)
    # expired: 401
    with connect(dbs.state_url, autocommit=True) as conn:
        record, secret = create_key(
            conn,
            acme.org.org_id,
            "viewer",
            expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
        )
        conn.execute(
            "UPDATE state.api_keys SET expires_at = now() - interval '1 second' WHERE key_id = %s",
            (record.key_id,),
        )
    refused(client.get("/v1/whoami", headers={"Authorization": f"Bearer {secret}"}), 401)

    # members: admins give roles up to their own; the other org sees and removes nothing
    ann = "/v1/members/ann@example.com"
    refused(client.put(ann, json={"role": "editor"}, headers=acme.h("editor")), 403)
    refused(client.put(ann, json={"role": "owner"}, headers=acme.h("admin")), 403)
    r = client.put(ann, json={"role": "editor"}, headers=acme.h("admin"))
    assert r.status_code == 200 and r.json()["role"] == "editor", r.text
    assert client.put(ann, json={"role": "owner"}, headers=acme.h("owner")).status_code == 200
    refused(client.put(ann, json={"role": "viewer"}, headers=acme.h("admin")), 403)  # outranks
    members = client.get("/v1/members", headers=acme.h("admin")).json()["members"]
    assert [(x["email"], x["role"]) for x in members] == [("ann@example.com", "owner")]
    assert client.get("/v1/members", headers=beta.h("admin")).json() == {"members": []}
    refused(client.delete(ann, headers=beta.h("owner")), 404)
    assert client.delete(ann, headers=acme.h("owner")).status_code == 200
    refused(client.delete(ann, headers=acme.h("owner")), 404)

    # per-key rate limit: a second app limited to 3 requests an hour per key
    limited = settings.model_copy(update={"api_rate_limit": "3/hour"})
    store = LocalStore(trace_home / "objects")
    app = create_app(limited, dbs, store, hot_sources=None, routes=api_routes(limited))
    with serving(app) as c2:
        for _ in range(3):
            assert c2.get("/v1/whoami", headers=acme.h("viewer")).status_code == 200
        r = c2.get("/v1/whoami", headers=acme.h("viewer"))
        refused(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) > 0
        assert c2.get("/v1/whoami", headers=acme.h("editor")).status_code == 200  # per key
        # guessing keys is limited per client address: the 4th bad key gets 429, not 401
        bad = {"Authorization": "Bearer trk_" + "f" * 48}
        assert [c2.get("/v1/whoami", headers=bad).status_code for _ in range(4)] == [
            401,
            401,
            401,
            429,
        ]
    assert "429 rate_limited" in " ".join(r[4] or "" for r in audit(dbs))


def test_query_and_trigger_in_the_callers_org(
    client: httpx.Client,
    orgs: tuple[Org, Org],
    dbs: Databases,
    settings: Settings,
    tmp_path: Path,
    trace_home: Path,
) -> None:
    acme, beta = orgs
    store = LocalStore(trace_home / "objects")
    assert client.post("/v1/jobs", content=JOB, headers=acme.h("editor")).status_code == 201
    as_acme = settings.model_copy(update={"org_id": acme.org.org_id})
    publish(as_acme, store, tmp_path, blocks_table(0, 100, gas=21_100))

    sql = {"sql": "SELECT count(*) AS n FROM blocks"}
    r = client.post("/v1/query", json=sql, headers=acme.h("viewer"))
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[100]]
    # an accepted query is audited in data.query_audit only (no audit_events row: no change)
    assert not [row for row in audit(dbs) if row[2] == "POST /v1/query"]
    # beta has no such relation: refused, no rows, audited
    r = client.post("/v1/query", json=sql, headers=beta.h("owner"))
    assert r.status_code in (400, 403) and "rows" not in r.json()
    last = audit(dbs)[-1]
    assert last[0] == beta.org.org_id and last[2] == "POST /v1/query" and last[3] == "refused"
    # a tampered user token (the Query Service's own kind) is refused with 401 and audited
    token = local_user_token(settings)
    head, body, sig = token.split(".")
    tampered = f"{head}.{body}.{sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BB'}"
    refused(
        client.post("/v1/query", json=sql, headers={"Authorization": f"Bearer {tampered}"}), 401
    )
    assert audit(dbs)[-1][3] == "refused" and "user token" in audit(dbs)[-1][4]

    # the manual trigger: idempotent per key; beta cannot trigger acme's job
    r = client.post("/v1/jobs", content=TRANSFORM, headers=acme.h("editor"))
    assert r.status_code == 201, r.text
    key = {"Idempotency-Key": "run-1"}
    refused(client.post("/v1/jobs/gas/trigger", headers={**beta.h("owner"), **key}), 404)
    refused(client.post("/v1/jobs/gas/trigger", headers={**acme.h("viewer"), **key}), 403)
    first = client.post("/v1/jobs/gas/trigger", headers={**acme.h("editor"), **key})
    assert first.status_code == 202 and first.json()["created"] is True, first.text
    again = client.post("/v1/jobs/gas/trigger", headers={**acme.h("editor"), **key})
    assert again.status_code == 200 and again.json()["task_id"] == first.json()["task_id"]
    status = client.get("/v1/jobs/gas", headers=acme.h("viewer")).json()
    assert status["kind"] == "transform" and status["status"]["source_events"] == {"manual": 1}
    with connect(dbs.state_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM state.source_events").fetchone() == (1,)


def test_org_aware_webhook_triggers_in_the_named_org_only(
    orgs: tuple[Org, Org],
    dbs: Databases,
    settings: Settings,
    tmp_path: Path,
    trace_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from trace_core.sources.webhook import signature, webhook_routes

    acme, beta = orgs
    secret = b"beta-hook-secret"
    monkeypatch.setenv("TRACE_SOURCE_BETA__GAS_WEBHOOK_SECRET", secret.decode())
    store = LocalStore(trace_home / "objects")
    hooked = TRANSFORM.replace("manual: true", "manual: true, webhook: true")
    app = create_app(
        settings, dbs, store, hot_sources=None,
        routes=[*api_routes(settings), *webhook_routes(settings)],
    )  # fmt: skip
    with serving(app) as c:
        for org in orgs:  # both orgs have a job src and a transform gas
            assert c.post("/v1/jobs", content=JOB, headers=org.h("editor")).status_code == 201
            publish(settings.model_copy(update={"org_id": org.org.org_id}), store, tmp_path,
                    blocks_table(0, 100, gas=21_100))  # fmt: skip
            r = c.post("/v1/jobs", content=hooked, headers=org.h("editor"))
            assert r.status_code == 201, r.text
        body = b'{"why": "prices"}'
        headers = {"Idempotency-Key": "d-1", "X-Trace-Signature": signature(secret, "d-1", body)}
        r = c.post("/v1/orgs/beta/sources/gas/webhook", content=body, headers=headers)
        assert r.status_code == 202, r.text
        # acme's job of the same name has no secret of its own: 404; an unknown org too
        for org in ("acme", "nobody"):
            r = c.post(f"/v1/orgs/{org}/sources/gas/webhook", content=body, headers=headers)
            assert r.status_code == 404 and r.json()["error"]["code"] == "webhook_not_configured"
    with connect(dbs.state_url, autocommit=True) as conn:
        rows = conn.execute("SELECT org_id, kind FROM state.source_events").fetchall()
    assert rows == [(beta.org.org_id, "webhook")]
    with connect(dbs.state_url, autocommit=True) as conn:
        refusals = conn.execute(
            "SELECT detail FROM state.audit_events WHERE actor = 'webhook' ORDER BY event_id"
        ).fetchall()
    assert refusals == [
        ("404 webhook_not_configured job=gas org=acme",),
        ("404 webhook_not_configured job=gas org=nobody",),
    ]


UDF = "def main(tables):\n    return tables['blocks']\n"


def test_python_udfs_travel_in_a_json_body_and_never_name_server_files(
    client: httpx.Client, orgs: tuple[Org, Org], dbs: Databases
) -> None:
    acme, beta = orgs
    assert client.post("/v1/jobs", content=JOB, headers=acme.h("editor")).status_code == 201
    python = TRANSFORM.replace(
        'sql: "SELECT block_number, gas_used FROM blocks WHERE gas_used > 21050"',
        "python: gas.py",
    )
    # a YAML body naming a Python file: 422 at its line, never read from the server's disk
    for name in ("gas.py", "/etc/passwd.py"):
        body = python.replace("gas.py", name)
        err = refused(client.post("/v1/jobs", content=body, headers=acme.h("editor")), 422)
        assert err["problems"][0]["field"] == "code.python" and err["problems"][0]["line"] == 5
    # a file that does not define main: 422, nothing stored
    bad = {"yaml": python, "files": {"gas.py": "x = 1\n"}}
    refused(client.post("/v1/jobs", json=bad, headers=acme.h("editor")), 422)
    # the YAML and its UDF in one JSON body: applied, the source stored as the org's bundle
    good = {"yaml": python, "files": {"gas.py": UDF}}
    refused(client.post("/v1/jobs", json=good, headers=acme.h("viewer")), 403)
    r = client.post("/v1/jobs", json=good, headers=acme.h("editor"))
    assert r.status_code == 201 and r.json()["kind"] == "transform", r.text
    with connect(dbs.state_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT t.org_id, t.code_kind, b.org_id FROM state.transform_definitions t"
            " JOIN state.udf_bundles b ON b.sha256 = t.bundle_sha256"
        ).fetchall()
    assert rows == [(acme.org.org_id, "python", acme.org.org_id)]
    assert client.post("/v1/jobs", json=good, headers=acme.h("editor")).json()["result"] == (
        "unchanged"
    )
