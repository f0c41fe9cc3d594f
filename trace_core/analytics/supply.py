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

from typing import Any

import duckdb

from trace_core.analytics import compute, fold, output
from trace_core.analytics.compute import Context, Result, output_input, ready, view
from trace_core.analytics.fold import Link
from trace_core.analytics.genesis import load_genesis
from trace_core.analytics.inputs import committed_versions
from trace_core.analytics.jobs import AnalyticsJob
from trace_core.analytics.output import OutputTarget, commit_query, fingerprint
from trace_core.datasets.registry import VersionRecord
from trace_core.db.queries import q


def _target(ctx: Any, job: AnalyticsJob, link: Link, lo: int) -> OutputTarget:
    return OutputTarget(
        ctx.org_id,
        job.job,
        job.chain_id,
        "native_supply",
        0,
        link.end,
        fingerprint(link.fp, lo),
        fake=link.fake,
    )


def _files(ctx: Any, rec: VersionRecord) -> str:
    return fold.files(ctx, rec)


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
    links = fold.input_links(records, end, fingerprint("native_supply", genesis_supply))
    lo = lo_of(end)
    final = _target(ctx, job, links[-1], lo)
    result = Result(start=lo, end=end)
    prev: tuple[Link, VersionRecord] | None = None
    committed = output.registered(ctx.state, final)
    if committed is None:
        prev = fold.previous(
            ctx.state, links, lambda link: _target(ctx, job, link, lo_of(link.end))
        )
        start = prev[0].end if prev else 0
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
        "folded_from": prev[0].end if prev is not None else None,
    }
    return result
