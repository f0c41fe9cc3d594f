"""Analytics assets (the Monad demos) over chain_sync streams, built with dagster-duckdb.

Per job with an ``analytics:`` block:

- per-range assets, partitioned by their input stream's own epoch partitions (same
  definition name, so the same keys): ``analytics/<job>/balance_changes`` and
  ``.../supply_deltas`` from the balance-diffs stream, ``.../staking_events`` from the logs
  stream. A new committed range recomputes only that range (a run of its epoch partition
  tagged ``trace/range``); launching an epoch from the UI computes its committed ranges;
  re-materializing over the same input versions registers nothing new (deterministic
  versions).
- roll-ups, unpartitioned: ``native_supply``, ``top_accounts`` + ``top_account_history``,
  ``validator_stake`` + ``staking_concentration``. Their inputs are the small per-range
  outputs, so recomputing them whole when a range lands stays cheap; a running total
  cannot be partitioned by range without each partition depending on all earlier ones.

Each asset ``deps`` on its inputs, so the UI shows ``chain_sync/<job>/<stream>`` -> derived.
Outputs are committed dataset versions (``analytics_<name>``); the op bodies call
``trace_core.analytics`` and translate results into metadata and check results.
"""

# No `from __future__ import annotations` here: Dagster resolves annotations at runtime.
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    AssetSpec,
    DynamicPartitionsDefinition,
    Failure,
    MaterializeResult,
    MetadataValue,
    define_asset_job,
    multi_asset,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from dagster_duckdb import DuckDBResource

from trace_core.analytics import checks, compute, supply
from trace_core.analytics.jobs import AnalyticsJob, load_analytics_jobs
from trace_core.chain_sync import epochs
from trace_core.chain_sync.planner import parse_partition_key, range_partition_key
from trace_core.errors import TraceError
from trace_core.runtime import Runtime
from trace_dagster.partitions import partitions_def_name, stream_asset_key
from trace_dagster.resources import TraceResource

log = logging.getLogger(__name__)

GROUP = "analytics"
# A per-range run's input range (its partition is the range's epoch).
RANGE_TAG = "trace/range"


_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def analytics_asset_key(job: str, name: str) -> AssetKey:
    """``analytics/<job>/<name>`` (job name made key-safe as for the stream assets)."""
    return AssetKey(["analytics", _UNSAFE.sub("_", job), name])


def duckdb_resource(rt: Runtime) -> DuckDBResource:
    """In-memory DuckDB per run: inputs and outputs live in the object store, not in DuckDB."""
    return DuckDBResource(database=":memory:")


def _metadata(result: compute.Result, name: str) -> dict[str, Any]:
    rec = result.outputs[name].record
    return {
        "dataset": MetadataValue.text(rec.dataset_key),
        "dataset_version": MetadataValue.text(str(rec.dataset_version)),
        "block_range": MetadataValue.text(f"[{rec.range_start}, {rec.range_end})"),
        "rows": rec.row_count,
        "bytes": rec.bytes,
        "input_rows": result.input_rows,
        "newly_registered": result.outputs[name].newly_registered,
        "fake": rec.fake,
    }


def _check_result(job: str, asset: str, outcome: checks.CheckOutcome) -> AssetCheckResult:
    """A skipped check (nothing compared) is not a pass: it shows as a WARN-severity failure
    whose description starts with ``skipped:`` and whose metadata says ``skipped: true``."""
    return AssetCheckResult(
        asset_key=analytics_asset_key(job, asset),
        check_name=outcome.name,
        passed=outcome.passed and not outcome.skipped,
        severity=AssetCheckSeverity.WARN if outcome.skipped else AssetCheckSeverity.ERROR,
        description=outcome.description,
        metadata={
            "details": MetadataValue.json(dict(outcome.metadata)),
            "skipped": outcome.skipped,
        },
    )


Compute = Callable[[compute.Context, Any, AnalyticsJob], compute.Result]
Checker = Callable[[compute.Context, Any, AnalyticsJob, compute.Result], checks.CheckOutcome]


def _run(
    context: AssetExecutionContext,
    trace: TraceResource,
    duckdb: DuckDBResource,
    job: AnalyticsJob,
    fn: Callable[..., compute.Result],
    names: Sequence[str],
    checkers: Sequence[tuple[str, Checker]] = (),
) -> Iterator[MaterializeResult | AssetCheckResult]:
    rt = trace.get_client()
    ranges: list[tuple[int, int]] = []
    try:
        with rt.state() as state, duckdb.get_connection() as con:
            ctx = compute.Context(rt.settings, rt.store, state)
            if context.has_partition_key:
                ranges = _ranges_to_run(context, rt, job, names)
                results = [fn(ctx, con, job, start, end) for start, end in ranges]
                if not results:
                    raise Failure(description=f"epoch {context.partition_key}: nothing committed")
                result = results[-1]
            else:
                result = fn(ctx, con, job)
            outcomes = [(asset, check(ctx, con, job, result)) for asset, check in checkers]
    except TraceError as exc:
        raise Failure(description=f"{type(exc).__name__}: {exc}") from exc
    context.log.info(f"job {job.job}: committed {', '.join(names)} {result.summary or ''}")
    for name in names:
        meta = _metadata(result, name)
        if ranges:
            meta["ranges"] = MetadataValue.text(
                ", ".join(range_partition_key(a, b) for a, b in ranges)
            )
        yield MaterializeResult(asset_key=analytics_asset_key(job.job, name), metadata=meta)
    for asset, outcome in outcomes:
        yield _check_result(job.job, asset, outcome)


def _ranges_to_run(
    context: AssetExecutionContext, rt: Runtime, job: AnalyticsJob, names: Sequence[str]
) -> list[tuple[int, int]]:
    """The input ranges a per-range run computes: the one its ``trace/range`` tag names (the
    sensor's runs), else every committed range of the partition's epoch (a UI launch)."""
    tagged = context.run.tags.get(RANGE_TAG)
    if tagged:
        return [parse_partition_key(tagged)]
    stream = job.spec.balance_diffs if "balance_changes" in names else job.spec.staking.logs  # type: ignore[union-attr]
    start, end = parse_partition_key(context.partition_key)
    with rt.state() as conn:
        target = epochs.stream_target(conn, rt.settings.org_id, job.job, str(stream))
        progress = epochs.progress_of(conn, target, start, end)
    return [(r.range_start, r.range_end) for r in progress.committed]


def _spec(
    job: AnalyticsJob, name: str, description: str, deps: Sequence[AssetKey], **kw: Any
) -> AssetSpec:
    return AssetSpec(
        key=analytics_asset_key(job.job, name),
        deps=list(deps),
        description=description,
        group_name=GROUP,
        kinds={"duckdb", "parquet"},
        metadata={"dataset": f"analytics_{name}", "chain_id": job.chain_id},
        **kw,
    )


def _partitions(job: AnalyticsJob, stream: str) -> DynamicPartitionsDefinition:
    return DynamicPartitionsDefinition(name=partitions_def_name(job.job, stream))


def job_assets(job: AnalyticsJob) -> list[AssetsDefinition]:
    """The analytics assets of one job (balances and supply, staking: whichever it sets)."""
    out: list[AssetsDefinition] = []
    key = lambda n: analytics_asset_key(job.job, n)  # noqa: E731
    if job.spec.balance_diffs is not None:
        stream = job.spec.balance_diffs
        raw = stream_asset_key(job.job, stream)

        @multi_asset(
            name=f"{key('balance_changes').path[1]}__balance_range",
            specs=[
                _spec(
                    job,
                    "balance_changes",
                    "per block and account: balance after the block and its net change (DECIMAL(38,0) wei)",
                    [raw],
                ),
                _spec(
                    job,
                    "supply_deltas",
                    "per block: net native supply change, minted, burned",
                    [raw],
                ),
            ],
            partitions_def=_partitions(job, stream),
            can_subset=False,
        )
        def balance_range(
            context: AssetExecutionContext, trace: TraceResource, duckdb: DuckDBResource
        ) -> Iterator[Any]:
            yield from _run(
                context,
                trace,
                duckdb,
                job,
                compute.balance_range,
                ["balance_changes", "supply_deltas"],
            )

        @multi_asset(
            name=f"{key('native_supply').path[1]}__native_supply",
            specs=[
                _spec(
                    job,
                    "native_supply",
                    "native supply at every block of the window (genesis + changes)",
                    [key("supply_deltas")],
                )
            ],
            check_specs=[
                AssetCheckSpec(
                    "supply_matches_chain",
                    asset=key("native_supply"),
                    description="sum of eth_getBalance over known accounts at sampled blocks",
                ),
                *(
                    [
                        AssetCheckSpec(
                            "supply_reconciles",
                            asset=key("native_supply"),
                            description="each block's supply change = reward - base fee burned",
                        )
                    ]
                    if job.spec.supply is not None
                    else []
                ),
            ],
        )
        def native_supply(
            context: AssetExecutionContext, trace: TraceResource, duckdb: DuckDBResource
        ) -> Iterator[Any]:
            yield from _run(
                context,
                trace,
                duckdb,
                job,
                supply.native_supply,
                ["native_supply"],
                [("native_supply", checks.supply_matches_chain)]
                + (
                    [("native_supply", checks.supply_reconciles)]
                    if job.spec.supply is not None
                    else []
                ),
            )

        @multi_asset(
            name=f"{key('top_accounts').path[1]}__top_accounts",
            specs=[
                _spec(
                    job,
                    "top_accounts",
                    "current top N accounts by native balance",
                    [key("balance_changes")],
                ),
                _spec(
                    job,
                    "top_account_history",
                    "each top account's balance at every synced range end",
                    [key("balance_changes")],
                ),
            ],
            check_specs=[
                AssetCheckSpec(
                    "top_accounts_match_chain",
                    asset=key("top_account_history"),
                    description="eth_getBalance at sampled range ends",
                ),
            ],
            can_subset=False,
        )
        def top_accounts(
            context: AssetExecutionContext, trace: TraceResource, duckdb: DuckDBResource
        ) -> Iterator[Any]:
            yield from _run(
                context,
                trace,
                duckdb,
                job,
                compute.top_accounts,
                ["top_accounts", "top_account_history"],
                [("top_account_history", checks.top_accounts_match_chain)],
            )

        out += [balance_range, native_supply, top_accounts]
    if job.spec.staking is not None:
        logs = job.spec.staking.logs
        raw_logs = stream_asset_key(job.job, logs)

        @multi_asset(
            name=f"{key('staking_events').path[1]}__staking_range",
            specs=[
                _spec(
                    job,
                    "staking_events",
                    "decoded staking precompile events (Delegate, Undelegate, ...)",
                    [raw_logs],
                )
            ],
            partitions_def=_partitions(job, logs),
        )
        def staking_range(
            context: AssetExecutionContext, trace: TraceResource, duckdb: DuckDBResource
        ) -> Iterator[Any]:
            yield from _run(context, trace, duckdb, job, compute.staking_range, ["staking_events"])

        @multi_asset(
            name=f"{key('validator_stake').path[1]}__staking_concentration",
            specs=[
                _spec(
                    job,
                    "validator_stake",
                    "per validator stake and delegator count over time",
                    [key("staking_events")],
                ),
                _spec(
                    job,
                    "staking_concentration",
                    "HHI, Nakamoto coefficient and top-k share over time",
                    [key("staking_events")],
                ),
            ],
            check_specs=[
                AssetCheckSpec(
                    "stake_is_consistent",
                    asset=key("staking_concentration"),
                    description="totals agree and metrics are within bounds",
                ),
            ],
            can_subset=False,
        )
        def staking_concentration(
            context: AssetExecutionContext, trace: TraceResource, duckdb: DuckDBResource
        ) -> Iterator[Any]:
            yield from _run(
                context,
                trace,
                duckdb,
                job,
                compute.staking_concentration,
                ["validator_stake", "staking_concentration"],
                [("staking_concentration", checks.stake_is_consistent)],
            )

        out += [staking_range, staking_concentration]
    return out


# --- automation: a sensor requests due work (trace_core.analytics.plan) ---------------------

_KIND_ASSETS = {
    "balance_range": ("balance_changes", "supply_deltas"),
    "balance_rollups": ("native_supply", "top_accounts", "top_account_history"),
    "staking_range": ("staking_events",),
    "staking_rollups": ("validator_stake", "staking_concentration"),
}


def job_name(job: str, kind: str) -> str:
    return f"analytics__{_UNSAFE.sub('_', job)}__{kind}"


def analytics_jobs(jobs: Sequence[AnalyticsJob]) -> list[UnresolvedAssetJobDefinition]:
    """One asset job per (analytics job, kind) the sensor can request."""
    out = []
    for job in jobs:
        kinds = []
        if job.spec.balance_diffs is not None:
            kinds += ["balance_range", "balance_rollups"]
        if job.spec.staking is not None:
            kinds += ["staking_range", "staking_rollups"]
        for kind in kinds:
            keys = [analytics_asset_key(job.job, n) for n in _KIND_ASSETS[kind]]
            out.append(
                define_asset_job(
                    job_name(job.job, kind),
                    selection=AssetSelection.assets(*keys),
                    description=f"analytics {kind} of job {job.job}",
                )
            )
    return out


def analytics_definitions(
    rt: Runtime,
) -> tuple[list[AssetsDefinition], list[UnresolvedAssetJobDefinition]]:
    """Assets and asset jobs for every applied job with analytics (none if state is down)."""
    try:
        with rt.state() as conn:
            jobs = load_analytics_jobs(conn, rt.settings.org_id)
    except TraceError as exc:
        log.warning("no analytics assets: state unavailable (%s)", exc)
        jobs = []
    return [a for job in jobs for a in job_assets(job)], analytics_jobs(jobs)
