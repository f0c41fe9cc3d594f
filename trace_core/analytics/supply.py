"""``analytics_native_supply`` as an incremental roll-up: new ranges fold into the last result.

The supply at block ``b`` is the genesis supply plus every supply delta up to ``b``. Each
committed version of the roll-up covers ``[0, end)`` (rows for the window ``[lo, end)``) and is
identified by a *chain* fingerprint: ``c_0 = fp(genesis supply)``, ``c_k = fp(c_{k-1}, version
and span of the k-th supply_deltas part)``, plus the window start. So the roll-up for an
earlier end is found in the registry by recomputing its id from registry data alone (the last
``CHECKPOINTS`` part ends are tried), and is still valid exactly when no input part before it
changed: a repaired range changes every later ``c_k`` and the fold restarts from the newest
roll-up before it (or from genesis).

Folding reads the previous roll-up's rows from ``lo`` on, and the supply deltas of the new
blocks only; a full recompute (no valid earlier roll-up) reads every delta. Both give the same
rows (``tests/dagster/test_analytics.py``: incremental equals a full recompute).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import duckdb

from trace_core.analytics import compute, output
from trace_core.analytics.compute import Context, Result, output_input, ready, view
from trace_core.analytics.genesis import load_genesis
from trace_core.analytics.inputs import committed_versions
from trace_core.analytics.jobs import AnalyticsJob
from trace_core.analytics.output import OutputTarget, commit_query, fingerprint
from trace_core.datasets.duckdb_sql import parquet_select
from trace_core.datasets.manifest import load_manifest
from trace_core.datasets.registry import VersionRecord, get_version, visible_parts
from trace_core.db.queries import q

CHECKPOINTS = 64  # earlier roll-ups looked for (newest first) before recomputing from genesis


def chain(
    parts: Sequence[tuple[uuid.UUID, int, int, bool]], genesis_supply: int
) -> list[tuple[int, str, bool]]:
    """``[(end, chain fingerprint, fake so far)]`` for genesis (end 0) and each part end."""
    out = [(0, fingerprint("native_supply", genesis_supply), False)]
    for version, start, end, fake in parts:
        _, prev, was_fake = out[-1]
        out.append((end, fingerprint(prev, version, start, end), was_fake or fake))
    return out


def _target(ctx: Any, job: AnalyticsJob, link: tuple[int, str, bool], lo: int) -> OutputTarget:
    end, fp, fake = link
    return OutputTarget(
        ctx.org_id, job.job, job.chain_id, "native_supply", 0, end, fingerprint(fp, lo), fake=fake
    )


def _files(ctx: Any, rec: VersionRecord) -> str:
    manifest = load_manifest(ctx.store, rec.manifest_key, prefix=rec.storage_prefix)
    return parquet_select([ctx.store.duckdb_uri(k) for k in manifest.parquet_keys])


def _previous(
    ctx: Any, job: AnalyticsJob, links: list[tuple[int, str, bool]], lo_of: Any
) -> tuple[int, VersionRecord] | None:
    """The newest still-valid earlier roll-up among the last ``CHECKPOINTS`` part ends."""
    tried = {
        _target(ctx, job, links[k], lo_of(links[k][0])).dataset_version: k
        for k in range(max(1, len(links) - 1 - CHECKPOINTS), len(links) - 1)
    }
    if not tried:
        return None
    found = ctx.state.execute(q("datasets", "live_version_ids"), {"versions": list(tried)})
    ks = [tried[row[0]] for row in found.fetchall()]
    if not ks:
        return None
    k = max(ks)
    rec = get_version(ctx.state, _target(ctx, job, links[k], lo_of(links[k][0])).dataset_version)
    return (links[k][0], rec) if rec is not None else None


def native_supply(ctx: Context, con: duckdb.DuckDBPyConnection, job: AnalyticsJob) -> Result:
    """Commit the supply series over the window (or full history) ending at the synced end,
    folding the new ranges into the newest valid earlier roll-up. Returns a
    ``compute.Result`` whose summary says where the fold started (``folded_from``, None for
    a full recompute)."""
    end = compute.synced_end(ctx, job, "supply_deltas")
    alloc = load_genesis(job, ctx.settings, ctx.environ)
    genesis_supply = sum(alloc.values())
    window = None if job.spec.full_history else job.spec.supply_window_blocks

    def lo_of(e: int) -> int:
        return 0 if window is None else max(0, e - window)

    key = output.dataset_key(job.job, "supply_deltas")
    records = committed_versions(ctx.state, ctx.org_id, job.chain_id, key)
    parts = [
        (p.record.dataset_version, p.start, p.end, p.record.fake)
        for p in visible_parts(records)
        if p.start < end
    ]
    links = chain(parts, genesis_supply)
    lo = lo_of(end)
    final = _target(ctx, job, links[-1], lo)
    result = Result(start=lo, end=end)
    prev: tuple[int, VersionRecord] | None = None
    committed = output.registered(ctx.state, final)
    if committed is None:
        prev = _previous(ctx, job, links, lo_of)
        start = prev[0] if prev else 0
        inp = output_input(ctx, job, "supply_deltas", start, end)
        ready(ctx, con, inp)
        view(con, "supply_deltas", inp.select_sql())
        params: dict[str, Any] = {"lo": lo, "hi": end}
        if prev is not None:
            view(con, "prev_supply", _files(ctx, prev[1]))
            sql, params = q("analytics_duckdb", "native_supply_fold"), {**params, "from": start}
        else:
            sql = q("analytics_duckdb", "native_supply")
            params = {**params, "genesis": str(genesis_supply)}
        result.input_rows = inp.rows
        committed = commit_query(ctx.state, ctx.store, con, final, sql, params)
    result.outputs["native_supply"] = committed
    last = con.execute(
        f"SELECT CAST(supply AS VARCHAR) FROM ({_files(ctx, committed.record)}) "
        "ORDER BY block_number DESC LIMIT 1"
    ).fetchone()
    result.summary = {
        "genesis_supply": genesis_supply,
        "supply": int(last[0]) if last else genesis_supply,
        "window": [lo, end],
        "folded_from": prev[0] if prev is not None else None,
    }
    return result
