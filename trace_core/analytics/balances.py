"""``account_balances``, ``top_accounts`` and ``top_account_history`` as an incremental roll-up.

The three outputs over ``[0, end)`` are committed together under a chain fingerprint of the
``balance_changes`` parts they read (``fold``: seeded with the genesis allocation and
``top_n``). ``account_balances`` (every account's balance at the end) is the state a new range
folds into: the new balances are the previous ones with the new range's changes on top, so
the top N is found without reading older ranges. The history (each top account's balance at
every point, ``fold.stable_points`` of the range ends) keeps the previous rows of accounts that
stay on top, computes the new points from the previous balances and the new changes, and reads
older changes only for accounts new to the top (filtered to them). A full recompute (no valid
earlier roll-up) reads every change; both give the same rows
(``tests/dagster/test_analytics.py``: incremental equals a full recompute).
"""

from __future__ import annotations

import duckdb

from trace_core.analytics import compute, fold, output
from trace_core.analytics.compute import Context, Result, output_input, ready, view
from trace_core.analytics.fold import Link
from trace_core.analytics.genesis import load_genesis
from trace_core.analytics.inputs import committed_versions
from trace_core.analytics.jobs import AnalyticsJob
from trace_core.analytics.output import commit_query, fingerprint
from trace_core.datasets.registry import VersionRecord
from trace_core.db.queries import q

MAX_HISTORY_POINTS = 2000
OUTPUTS = ("account_balances", "top_accounts", "top_account_history")


def links_and_points(
    ctx: Context, job: AnalyticsJob, end: int, alloc: dict[str, int]
) -> tuple[list[Link], list[int]]:
    """The fold chain over ``balance_changes`` below ``end`` and the history's points."""
    records = committed_versions(
        ctx.state, ctx.org_id, job.chain_id, output.dataset_key(job.job, "balance_changes")
    )
    seed = fingerprint(
        "top_accounts", fingerprint(*sorted(alloc.items())), job.spec.top_n, MAX_HISTORY_POINTS
    )
    links = fold.input_links(records, end, seed)
    return links, fold.stable_points([link.end - 1 for link in links[1:]], MAX_HISTORY_POINTS)


def build(
    ctx: Context,
    con: duckdb.DuckDBPyConnection,
    job: AnalyticsJob,
    end: int,
    points: list[int],
    prev: dict[str, VersionRecord] | None,
    prev_end: int,
) -> int:
    """Create the temp tables ``latest_balances``, ``top_accounts`` and ``history`` for
    ``[0, end)``, folding from ``prev`` (the roll-up over ``[0, prev_end)``) when given.
    Returns the input rows read."""
    start = prev_end if prev else 0
    inp = output_input(ctx, job, "balance_changes", start, end)
    ready(ctx, con, inp)
    view(con, "balance_changes", inp.select_sql())
    compute.genesis_table(con, load_genesis(job, ctx.settings, ctx.environ))
    if prev:
        view(con, "prev_balances", fold.files(ctx, prev["account_balances"]))
        view(con, "prev_history", fold.files(ctx, prev["top_account_history"]))
        view(con, "carry", q("analytics_duckdb", "carry_balances"))
    else:
        view(con, "carry", q("analytics_duckdb", "carry_genesis"))
    con.execute(
        "CREATE OR REPLACE TEMP TABLE latest_balances AS "
        + q("analytics_duckdb", "latest_balances")
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE top_accounts AS " + q("analytics_duckdb", "top_accounts"),
        {"as_of": end - 1, "top_n": job.spec.top_n},
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE points AS SELECT CAST(unnest($p) AS UBIGINT) AS block_number",
        {"p": points},
    )
    history = q("analytics_duckdb", "top_account_history")
    rows = inp.rows
    view(con, "hist_top", "SELECT rank, address FROM top_accounts")
    view(con, "hist_changes", "SELECT * FROM balance_changes")
    if not prev:
        view(con, "hist_points", "SELECT * FROM points")
        view(con, "hist_base", "SELECT address, balance FROM genesis")
        con.execute("CREATE OR REPLACE TEMP TABLE history AS " + history)
        return rows
    # points from the fold on: the previous balances plus the new changes
    view(con, "hist_points", f"SELECT * FROM points WHERE block_number >= {int(start)}")
    view(con, "hist_base", "SELECT address, balance FROM prev_balances")
    con.execute("CREATE OR REPLACE TEMP TABLE history AS " + history)
    # earlier points: the previous rows of accounts still on top ...
    con.execute(
        "INSERT INTO history " + q("analytics_duckdb", "top_account_history_kept"),
        {"from": start},
    )
    # ... and, for accounts new to the top, their older changes (read for them only)
    entrants = "SELECT rank, address FROM top_accounts WHERE address NOT IN (SELECT address FROM prev_history)"
    if con.execute(f"SELECT count(*) FROM ({entrants})").fetchone() != (0,) and start > 0:
        old = output_input(ctx, job, "balance_changes", 0, start)
        view(con, "hist_top", entrants)
        view(con, "hist_changes", old.select_sql())
        view(con, "hist_points", f"SELECT * FROM points WHERE block_number < {int(start)}")
        view(con, "hist_base", "SELECT address, balance FROM genesis")
        con.execute("INSERT INTO history " + history)
        rows += old.rows
    return rows


def top_accounts(ctx: Context, con: duckdb.DuckDBPyConnection, job: AnalyticsJob) -> Result:
    """Commit every account's balance, the current top N accounts and each one's balance at
    every (thinned) range end, folding the new ranges into the newest valid earlier roll-up.
    The summary says where the fold started (``folded_from``, None: recomputed)."""
    end = compute.synced_end(ctx, job, "balance_changes")
    alloc = load_genesis(job, ctx.settings, ctx.environ)
    links, points = links_and_points(ctx, job, end, alloc)
    final = fold.targets(ctx, job, links[-1], OUTPUTS)
    result = Result(start=0, end=end)
    have = {name: output.registered(ctx.state, t) for name, t in final.items()}
    prev_link: Link | None = None
    if all(have.values()):
        result.outputs = {name: v for name, v in have.items() if v is not None}
        view(con, "top_accounts", fold.files(ctx, result.outputs["top_accounts"].record))
    else:
        found = fold.previous_rollup(ctx, job, links, OUTPUTS, "account_balances")
        prev: dict[str, VersionRecord] | None = None
        if found is not None:
            prev_link, prev = found
        result.input_rows = build(
            ctx, con, job, end, points, prev, prev_link.end if prev_link else 0
        )
        sqls = {
            "account_balances": (q("analytics_duckdb", "account_balances"), {"as_of": end - 1}),
            "top_accounts": ("SELECT * FROM top_accounts ORDER BY rank", None),
            "top_account_history": ("SELECT * FROM history ORDER BY block_number, rank", None),
        }
        for name, (sql, params) in sqls.items():
            result.outputs[name] = commit_query(ctx.state, ctx.store, con, final[name], sql, params)
    top = con.execute(
        "SELECT rank, address, CAST(balance AS VARCHAR) FROM top_accounts ORDER BY rank"
    ).fetchall()
    result.summary = {
        "top": [(r, a, int(b)) for r, a, b in top],
        "as_of_block": end - 1,
        "folded_from": prev_link.end if prev_link else None,
    }
    return result
