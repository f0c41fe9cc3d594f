"""``validator_stake``, ``staking_concentration`` and ``delegator_stake`` as an incremental
roll-up over ``staking_events``.

The three outputs over ``[0, end)`` are committed together under a chain fingerprint of the
``staking_events`` parts (``fold``: seeded with the staking address and ``top_k``).
``delegator_stake`` (each validator-delegator pair's net stake at the end) is the state a new
range folds into: stakes at the new points are the carried net stakes plus the new events, so
no older event is read. Points are ``fold.stable_points`` of the range ends; the previous
``validator_stake`` rows at the points before the fold are kept, and the concentration metrics
are evaluated from ``validator_stake`` (a few rows per point). A full recompute (no valid
earlier roll-up) reads every event; both give the same rows
(``tests/dagster/test_analytics.py``: incremental equals a full recompute).
"""

from __future__ import annotations

import duckdb

from trace_core.analytics import compute, fold, output
from trace_core.analytics.compute import Context, Result, output_input, ready, view
from trace_core.analytics.fold import Link
from trace_core.analytics.inputs import committed_versions
from trace_core.analytics.jobs import AnalyticsJob
from trace_core.analytics.metrics import concentration_rows
from trace_core.analytics.output import commit_query, fingerprint
from trace_core.datasets.registry import VersionRecord
from trace_core.db.queries import q

# Most points in time the staking roll-up evaluates (stable thinning of range ends, last kept).
MAX_CONCENTRATION_POINTS = 500
OUTPUTS = ("delegator_stake", "validator_stake", "staking_concentration")


def links_and_points(ctx: Context, job: AnalyticsJob, end: int) -> tuple[list[Link], list[int]]:
    """The fold chain over ``staking_events`` below ``end`` and the points evaluated."""
    _, address = job.require_staking()
    top_k = list(job.spec.staking.top_k) if job.spec.staking else [1]
    records = committed_versions(
        ctx.state, ctx.org_id, job.chain_id, output.dataset_key(job.job, "staking_events")
    )
    seed = fingerprint("staking", address, top_k, MAX_CONCENTRATION_POINTS)
    links = fold.input_links(records, end, seed)
    return links, fold.stable_points([link.end - 1 for link in links[1:]], MAX_CONCENTRATION_POINTS)


def build(
    ctx: Context,
    con: duckdb.DuckDBPyConnection,
    job: AnalyticsJob,
    end: int,
    points: list[int],
    prev: dict[str, VersionRecord] | None,
    prev_end: int,
) -> tuple[int, dict[int, dict[int, int]]]:
    """Create the temp tables ``delegators`` and ``validator_stake`` for ``[0, end)``, folding
    from ``prev`` (the roll-up over ``[0, prev_end)``) when given. Returns the input rows read
    and the stakes per point (``{block: {validator: stake}}``)."""
    start = prev_end if prev else 0
    inp = output_input(ctx, job, "staking_events", start, end)
    ready(ctx, con, inp)
    view(con, "staking_events", inp.select_sql())
    if prev:
        view(con, "prev_delegators", fold.files(ctx, prev["delegator_stake"]))
        view(con, "prev_validators", fold.files(ctx, prev["validator_stake"]))
        view(con, "carry_stake", q("analytics_duckdb", "carry_stake_prev"))
    else:
        view(con, "carry_stake", q("analytics_duckdb", "carry_stake_none"))
    con.execute(
        "CREATE OR REPLACE TEMP TABLE stake_moves AS " + q("analytics_duckdb", "stake_moves")
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE delegators AS " + q("analytics_duckdb", "delegator_stake"),
        {"as_of": end - 1},
    )
    fresh = [p for p in points if p >= start]
    con.execute(
        "CREATE OR REPLACE TEMP TABLE points AS SELECT CAST(unnest($p) AS UBIGINT) AS block_number",
        {"p": fresh},
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE validator_stake AS "
        + q("analytics_duckdb", "validator_stake")
    )
    if prev:  # the previous rows at the points before the fold that remain
        con.execute(
            "INSERT INTO validator_stake SELECT * FROM prev_validators "
            "WHERE block_number < $from AND list_contains($p, block_number)",
            {"from": start, "p": points},
        )
    return inp.rows, _stakes(con, points)


def _stakes(con: duckdb.DuckDBPyConnection, points: list[int]) -> dict[int, dict[int, int]]:
    """``{block: {validator: stake}}`` of the ``validator_stake`` relation at ``points``."""
    stakes: dict[int, dict[int, int]] = {p: {} for p in points}
    for block, validator, stake in con.execute(
        "SELECT block_number, validator_id, CAST(stake AS VARCHAR) FROM validator_stake"
    ).fetchall():
        stakes.setdefault(int(block), {})[int(validator)] = int(stake)
    return stakes


def staking_concentration(
    ctx: Context, con: duckdb.DuckDBPyConnection, job: AnalyticsJob
) -> Result:
    """Commit net stake per delegator, per-validator stake and the concentration metrics at
    every (thinned) range end, folding new ranges into the newest valid earlier roll-up."""
    job.require_staking()
    end = compute.synced_end(ctx, job, "staking_events")
    top_k = list(job.spec.staking.top_k) if job.spec.staking else [1]
    links, points = links_and_points(ctx, job, end)
    final = fold.targets(ctx, job, links[-1], OUTPUTS)
    result = Result(start=0, end=end)
    prev_link: Link | None = None
    have = {name: output.registered(ctx.state, t) for name, t in final.items()}
    if all(have.values()):
        result.outputs = {name: v for name, v in have.items() if v is not None}
        view(con, "validator_stake", fold.files(ctx, result.outputs["validator_stake"].record))
        stakes = _stakes(con, points)
        table = concentration_rows(stakes, top_k)
    else:
        found = fold.previous_rollup(ctx, job, links, OUTPUTS, "delegator_stake")
        prev: dict[str, VersionRecord] | None = None
        if found is not None:
            prev_link, prev = found
        result.input_rows, stakes = build(
            ctx, con, job, end, points, prev, prev_link.end if prev_link else 0
        )
        table = concentration_rows(stakes, top_k)
        con.register("concentration_arrow", table)
        sqls = {
            "delegator_stake": "SELECT * FROM delegators ORDER BY validator_id, delegator",
            "validator_stake": "SELECT * FROM validator_stake ORDER BY block_number, validator_id",
            "staking_concentration": "SELECT * FROM concentration_arrow ORDER BY block_number",
        }
        try:
            for name, sql in sqls.items():
                result.outputs[name] = commit_query(ctx.state, ctx.store, con, final[name], sql)
        finally:
            con.unregister("concentration_arrow")
    last = table.slice(table.num_rows - 1).to_pylist()[0] if table.num_rows else {}
    result.summary = {
        "latest": last,
        "validators": stakes[points[-1]] if points else {},
        "folded_from": prev_link.end if prev_link else None,
    }
    return result
