"""Two orgs follow the same anvil chain, each through its own job (same name) and RPC: each
gets its own hot rows, cursor, events and invalidations, repairs a reorg on its own, compacts
into its own datasets' versions, and sees only its own hot rows as a tenant and through a
query with its API key. Real Postgres (roles and row-level security), anvil, DuckDB.

The follower and compactor connect as ``trace_system`` (row-level security bypassed), so what
keeps the orgs apart here is the org in every key and filter of the hot path.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from tests.integration.test_hot_path import CHAIN_ID, Chain, chain  # noqa: F401
from trace_core.chain_sync.store import apply_job
from trace_core.chain_sync.yamlload import parse_job
from trace_core.datasets import ids, registry
from trace_core.db.connection import Databases, connect
from trace_core.engine.service_steps import compactor_step, follower_step
from trace_core.hot.federation import federated_sources
from trace_core.hot.follower import DATASET_EVENTS, follow_once, load_cursor
from trace_core.query.service import QueryRequest, QueryService
from trace_core.runtime import Runtime
from trace_core.settings import Settings
from trace_core.tenancy import create_key, create_org, tenant_scope

LOG = logging.getLogger("test_hot_orgs")
# the same job (same name) in both orgs: hot from block 1, final 2 blocks below the tip
JOB = (
    f"kind: chain_sync\nname: hot\nchain_id: {CHAIN_ID}\n"
    "mode: {kind: fixed_target, from_block: 0, to_block: 1}\n"
    "streams:\n  blocks: {cryo_dataset_name: blocks, rpc_pool: p, chunk_size: 10, max_inflight: 1}\n"
    "hot: {rpc_pool: p}\nfinality_depth: 2\n"
)


def _hashes(dbs: Databases, org: uuid.UUID) -> dict[int, str]:
    with connect(dbs.data_url) as conn:
        rows = conn.execute(
            "SELECT block_number, block_hash FROM data.hot_blocks"
            " WHERE org_id = %s AND chain_id = %s",
            (org, CHAIN_ID),
        ).fetchall()
    return {int(n): "0x" + bytes(h).hex() for n, h in rows}


def _counts(dbs: Databases, org: uuid.UUID) -> tuple[int, int]:
    with connect(dbs.data_url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM data.hot_transactions WHERE org_id = %(o)s),"
            " (SELECT count(*) FROM data.hot_logs WHERE org_id = %(o)s)",
            {"o": org},
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _events(dbs: Databases, org: uuid.UUID) -> list[tuple[str, int, int]]:
    with connect(dbs.state_url) as conn:
        rows = conn.execute(
            "SELECT payload FROM state.outbox WHERE topic = %s AND org_id = %s"
            " ORDER BY (payload->>'range_start')::int",
            (DATASET_EVENTS, org),
        ).fetchall()
    assert all(r[0]["org_id"] == str(org) for r in rows)
    return [(r[0]["event"], r[0]["range_start"], r[0]["range_end"]) for r in rows]


def _invalidations(dbs: Databases, org: uuid.UUID) -> list[tuple[int, int]]:
    with connect(dbs.data_url) as conn:
        rows = conn.execute(
            "SELECT range_start, range_end FROM data.data_invalidations WHERE org_id = %s",
            (org,),
        ).fetchall()
    return [(int(a), int(b)) for a, b in rows]


def _chain_hashes(dev: Chain, start: int, head: int) -> dict[int, str]:
    return {n: dev.block(n)["hash"] for n in range(start, head + 1)}


def test_two_orgs_follow_reorg_compact_and_query_one_chain_apart(
    settings: Settings,
    dbs: Databases,
    chain: Chain,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for i in range(8):
        chain.busy_block(i)
    head = chain.head()
    monkeypatch.setenv("TRACE_RPC_POOL_P_URL", chain.url)
    spec, raw = parse_job(JOB, source="job.yaml")
    with connect(dbs.state_url, autocommit=True) as conn:
        a = create_org(conn, "org-a").org_id
        b = create_org(conn, "org-b").org_id
        for org in (a, b):
            apply_job(conn, org, spec, raw, "job.yaml")
        keys = {org: create_key(conn, org, "viewer")[1] for org in (a, b)}
    rt = Runtime(settings.model_copy(update={"hot_compact_range_size": 4}))

    # one follower step follows the chain once per org, into each org's own rows
    step = follower_step(rt, None, LOG)
    assert step.worked, step.summary
    for org in (a, b):
        assert f"(org {str(org)[:8]}) (job hot): +{head} blocks, cursor {head}" in step.summary
        assert _hashes(dbs, org) == _chain_hashes(chain, 1, head)
        # identical ranges and hashes: each org's event has its own dedupe name
        assert _events(dbs, org) == [("hot_range_committed", 1, head + 1)]
        with connect(dbs.state_url) as conn:
            cursor = load_cursor(conn, org, CHAIN_ID)
        assert cursor is not None and (cursor.first_block, cursor.number) == (1, head)
    assert _counts(dbs, a) == _counts(dbs, b) and min(_counts(dbs, a)) > 0
    with connect(dbs.state_url) as conn:  # the deployment's own org follows nothing
        assert load_cursor(conn, settings.org_id, CHAIN_ID) is None

    # a reorg: org A's follower repairs A's rows and leaves B's alone until B's turn
    before = _hashes(dbs, b)
    chain.rpc("anvil_reorg", 3, [])
    assert chain.head() == head
    r = follow_once(settings, dbs, CHAIN_ID, chain.url, max_blocks=10, org_id=str(a))
    assert (r.reorged_depth, r.ingested, r.cursor, r.org_id) == (3, 3, head, str(a))
    assert _hashes(dbs, a) == _chain_hashes(chain, 1, head)
    assert _hashes(dbs, b) == before != _hashes(dbs, a)
    assert (_invalidations(dbs, a), _invalidations(dbs, b)) == ([(head - 2, head + 1)], [])
    step = follower_step(rt, step.cursor, LOG)
    assert (
        f"(org {str(b)[:8]}) (job hot): +3 blocks, cursor {head}, head {head}, "
        "repaired a reorg of depth 3"
    ) in step.summary
    assert f"(org {str(a)[:8]}) (job hot): +0 blocks" in step.summary
    assert _hashes(dbs, b) == _hashes(dbs, a)
    assert _invalidations(dbs, b) == [(head - 2, head + 1)]
    assert sorted(_events(dbs, b)) == [
        ("hot_range_committed", 1, head + 1),
        ("hot_range_committed", head - 2, head + 1),
        ("hot_range_invalidated", head - 2, head + 1),
    ]

    # compaction: each org's final ranges become versions of its own datasets
    result = compactor_step(rt, None, LOG)
    assert result.worked, result.summary
    assert {e.metadata["org_id"] for e in result.observations} == {str(a), str(b)}
    cut = (head - 1) // 4 * 4  # final below head - 2 + 1, ranges [1, 4), [4, 8), ...
    with connect(dbs.state_url) as conn:
        versions = {
            org: registry.versions_for_stream(conn, org, CHAIN_ID, "blocks") for org in (a, b)
        }
    for org, recs in versions.items():
        assert [(v.range_start, v.range_end) for v in recs] == [(1, 4)] + [
            (s, s + 4) for s in range(4, cut, 4)
        ]
        assert {v.dataset_uuid for v in recs} == {ids.dataset_uuid(org, CHAIN_ID, "blocks")}
        assert {v.org_id for v in recs} == {org}
        assert sorted(_hashes(dbs, org)) == list(range(cut, head + 1))  # the rest stays hot
    assert not {v.dataset_version for v in versions[a]} & {v.dataset_version for v in versions[b]}
    with connect(dbs.state_url) as conn:
        recorded = conn.execute(
            "SELECT org_id, count(*) FROM state.partition_versions GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert dict(recorded) == {a: 3 * len(versions[a]), b: 3 * len(versions[b])}

    # reads: the federated hot predicate, a tenant session and an API key see the org's own
    fed = federated_sources(settings, dbs, CHAIN_ID, "blocks", store=rt.store, org_id=str(a))
    with connect(dbs.data_url) as conn:
        both = conn.execute(f"SELECT count(*) FROM data.hot_blocks WHERE block_number >= {cut}")
        assert both.fetchone() == (2 * (head + 1 - cut),)
        own = conn.execute(f"SELECT count(*) FROM data.hot_blocks WHERE {fed.hot_predicate()}")
        assert own.fetchone() == (head + 1 - cut,)
        for org in (a, b):
            with tenant_scope(conn, org):
                seen = conn.execute("SELECT DISTINCT org_id FROM data.hot_blocks").fetchall()
                assert seen == [(org,)]
    # with row-level security (as trace_tenant), and without it (the org filter alone)
    sql = "SELECT count(*), count(DISTINCT block_number), min(block_number) FROM blocks"
    for row_security in (True, False):
        service = QueryService(
            settings.model_copy(update={"query_workers": 0}),
            dbs,
            rt.store,
            row_security=row_security,
        )
        service.open()
        try:
            for org in (a, b):
                reply: dict[str, Any] = service.query("user", keys[org], QueryRequest(sql=sql))
                assert reply["rows"] == [[head, head, 1]], (row_security, org)  # cold + own hot
        finally:
            service.close()
