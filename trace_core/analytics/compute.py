"""The analytics computations: inputs (committed versions) -> DuckDB SQL -> committed outputs.

Per block range (incremental, one call per input range, idempotent):
  ``balance_range``: ``analytics_balance_changes`` (per block and account: balance after the
  block, net change) and ``analytics_supply_deltas`` (per block: net supply change, minted,
  burned), from a balance-diffs stream.
  ``staking_range``: ``analytics_staking_events`` (decoded staking precompile events), from a
  logs stream.
Roll-ups over everything committed so far, contiguous from block 0 (their inputs are the small
per-range outputs):
  ``native_supply``: ``analytics_native_supply`` (supply at each block of the window), lives in
  ``supply`` (it folds new ranges into the last valid roll-up); the others recompute when a
  range is added.
  ``top_accounts``: ``analytics_account_balances``, ``analytics_top_accounts`` and
  ``analytics_top_account_history``, lives in ``balances`` (it folds too).
  ``staking_concentration``: ``analytics_delegator_stake``, ``analytics_validator_stake`` and
  ``analytics_staking_concentration`` (HHI, Nakamoto coefficient, top-k shares), lives in
  ``staking`` (it folds too).

Every function takes a DuckDB connection (the Dagster asset passes dagster-duckdb's) and a
state connection; it raises ``DatasetNotSynced`` naming the stream when an input is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
from psycopg import Connection

from trace_core.analytics import output
from trace_core.analytics.inputs import (
    StreamInput,
    committed_versions,
    covered_end,
    stream_input,
)
from trace_core.analytics.jobs import AnalyticsJob
from trace_core.analytics.output import OutputTarget, commit_query, fingerprint
from trace_core.datasets.commit import CommittedVersion
from trace_core.db.queries import q
from trace_core.errors import DatasetNotSynced
from trace_core.settings import Settings
from trace_core.storage.base import ObjectStore

# keccak256 of the IMonadStaking event signatures (checked against anvil's web3_sha3 in tests).
STAKING_TOPICS: Mapping[str, str] = {
    "delegate": "e4d4df1e1827dd28252fd5c3cd7ebccd3da6e0aa31f74c828f3c8542af49d840",
    "undelegate": "3e53c8b91747e1b72a44894db10f2a45fa632b161fdcdd3a17bd6be5482bac62",
    "withdraw": "63030e4238e1146c63f38f4ac81b2b23c8be28882e68b03f0887e50d0e9bb18f",
    "claim_rewards": "cb607e6b63c89c95f6ae24ece9fe0e38a7971aa5ed956254f1df47490921727b",
    "validator_created": "6f8045cd38e512b8f12f6f02947c632e5f25af03aad132890ecf50015d97c1b2",
    "validator_rewarded": "3a420a01486b6b28d6ae89c51f5c3bde3e0e74eecbb646a0c481ccba3aae3754",
}
STAKING_SIGNATURES: Mapping[str, str] = {
    "delegate": "Delegate(uint64,address,uint256,uint64)",
    "undelegate": "Undelegate(uint64,address,uint8,uint256,uint64)",
    "withdraw": "Withdraw(uint64,address,uint8,uint256,uint64)",
    "claim_rewards": "ClaimRewards(uint64,address,uint256,uint64)",
    "validator_created": "ValidatorCreated(uint64,address,uint256)",
    "validator_rewarded": "ValidatorRewarded(uint64,address,uint256,uint64)",
}


@dataclass(frozen=True)
class Context:
    """What every computation needs: settings (org, RPC timeouts), store, state connection."""

    settings: Settings
    store: ObjectStore
    state: Connection[Any]
    environ: Mapping[str, str] | None = None

    @property
    def org_id(self) -> str:
        return self.settings.org_id


@dataclass
class Result:
    """Committed outputs by name, plus numbers worth showing (rows, a summary)."""

    outputs: dict[str, CommittedVersion] = field(default_factory=dict)
    input_rows: int = 0
    start: int = 0
    end: int = 0
    summary: dict[str, Any] = field(default_factory=dict)


def prepare(con: duckdb.DuckDBPyConnection) -> None:
    """Create the analytics macros on ``con`` (idempotent)."""
    con.execute(q("analytics_duckdb", "macros"))


def view(con: duckdb.DuckDBPyConnection, name: str, select_sql: str) -> None:
    con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS {select_sql}')


def ready(ctx: Context, con: duckdb.DuckDBPyConnection, *inputs: StreamInput) -> None:
    """Macros, and store access for the inputs' files."""
    prepare(con)
    for inp in inputs:
        for part in inp.parts:
            for uri in part.uris[:1]:
                enable_object_store(con, ctx.settings, uri)
                return


def output_input(ctx: Context, job: AnalyticsJob, name: str, start: int, end: int) -> StreamInput:
    """Committed analytics output ``name`` over ``[start, end)`` as an input."""
    return stream_input(
        ctx.state,
        ctx.store,
        org_id=ctx.org_id,
        job=job.job,
        stream=output.output_key(name),
        chain_id=job.chain_id,
        start=start,
        end=end,
        dataset_key=output.dataset_key(job.job, name),
    )


# --- per range -----------------------------------------------------------------------------


def balance_range(
    ctx: Context, con: duckdb.DuckDBPyConnection, job: AnalyticsJob, start: int, end: int
) -> Result:
    """Commit ``balance_changes`` and ``supply_deltas`` for ``[start, end)`` of the job's
    balance-diffs stream. Raises ``DatasetNotSynced`` when the range is not committed."""
    stream = job.require_balances()
    inp = stream_input(
        ctx.state,
        ctx.store,
        org_id=ctx.org_id,
        job=job.job,
        stream=stream,
        chain_id=job.chain_id,
        start=start,
        end=end,
    )
    ready(ctx, con, inp)
    fp = inp.fingerprint()
    changes = OutputTarget(
        ctx.org_id, job.job, job.chain_id, "balance_changes", start, end, fp, fake=inp.fake
    )
    salt = job.deltas_salt()
    deltas = OutputTarget(
        ctx.org_id,
        job.job,
        job.chain_id,
        "supply_deltas",
        start,
        end,
        fingerprint(fp, *salt) if salt else fp,
        fake=inp.fake,
    )
    result = Result(input_rows=inp.rows, start=start, end=end)
    have_changes = output.registered(ctx.state, changes)
    have_deltas = output.registered(ctx.state, deltas)
    if have_changes is not None and have_deltas is not None:
        result.outputs = {"balance_changes": have_changes, "supply_deltas": have_deltas}
        return result
    view(con, "diffs", inp.select_sql())
    con.execute(
        "CREATE OR REPLACE TEMP TABLE balance_changes AS "
        + q("analytics_duckdb", "balance_changes")
    )
    try:
        result.outputs["balance_changes"] = commit_query(
            ctx.state, ctx.store, con, changes, "SELECT * FROM balance_changes"
        )
        result.outputs["supply_deltas"] = commit_query(
            ctx.state,
            ctx.store,
            con,
            deltas,
            q("analytics_duckdb", "supply_deltas"),
            {"burn": job.burn_addresses},
        )
    finally:
        con.execute("DROP TABLE IF EXISTS balance_changes")
    return result


def staking_range(
    ctx: Context, con: duckdb.DuckDBPyConnection, job: AnalyticsJob, start: int, end: int
) -> Result:
    """Commit ``staking_events`` for ``[start, end)`` of the job's staking logs stream."""
    stream, address = job.require_staking()
    inp = stream_input(
        ctx.state,
        ctx.store,
        org_id=ctx.org_id,
        job=job.job,
        stream=stream,
        chain_id=job.chain_id,
        start=start,
        end=end,
    )
    ready(ctx, con, inp)
    target = OutputTarget(
        ctx.org_id,
        job.job,
        job.chain_id,
        "staking_events",
        start,
        end,
        fingerprint(inp.fingerprint(), *job.events_salt()),
        fake=inp.fake,
    )
    result = Result(input_rows=inp.rows, start=start, end=end)
    view(con, "logs", inp.select_sql())
    params = {"address": address[2:], **STAKING_TOPICS}
    result.outputs["staking_events"] = commit_query(
        ctx.state, ctx.store, con, target, q("analytics_duckdb", "staking_events"), params
    )
    return result


# --- roll-ups ------------------------------------------------------------------------------


def synced_end(ctx: Context, job: AnalyticsJob, name: str) -> int:
    """End of the span of output ``name`` committed contiguously from block 0.

    Raises ``DatasetNotSynced`` naming the input stream when nothing is committed yet."""
    key = output.dataset_key(job.job, name)
    records = committed_versions(ctx.state, ctx.org_id, job.chain_id, key)
    end = covered_end(records, 0)
    if end == 0:
        raise DatasetNotSynced(
            f"job {job.job!r}: no range of {output.output_key(name)} from block 0 is committed "
            "yet; materialize the per-range analytics of the synced ranges first",
            job=job.job,
            stream=output.output_key(name),
        )
    return end


def genesis_table(con: duckdb.DuckDBPyConnection, alloc: Mapping[str, int]) -> None:
    table = pa.table(
        {
            "address": pa.array(list(alloc), pa.string()),
            "balance": pa.array([str(v) for v in alloc.values()], pa.string()),
        }
    )
    con.register("genesis_alloc_arrow", table)
    try:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE genesis AS SELECT address, "
            "CAST(CAST(balance AS HUGEINT) AS DECIMAL(38,0)) AS balance FROM genesis_alloc_arrow"
        )
    finally:
        con.unregister("genesis_alloc_arrow")


def enable_object_store(con: duckdb.DuckDBPyConnection, settings: Settings, uri: str) -> None:
    """Let ``con`` read ``uri``'s store: for ``s3://`` load httpfs (offline, from its wheel)
    and create a temporary secret from boto3's credential chain; local paths need nothing."""
    if not uri.startswith("s3://"):
        return
    import duckdb_extensions

    from trace_core.query.sandbox import S3Access, create_s3_secret

    duckdb_extensions.import_extension("httpfs", con=con)
    con.execute("LOAD httpfs")
    create_s3_secret(con, S3Access.from_settings(settings))
