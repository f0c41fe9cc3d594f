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

The assets are rows of ``trace_core.analytics.CATALOG`` (one ``@multi_asset`` per row, one
asset job per row kind). Each asset ``deps`` on its inputs, so the UI shows
``chain_sync/<job>/<stream>`` -> derived.
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
    in_process_executor,
    multi_asset,
)
from dagster_duckdb import DuckDBResource

from trace_core.engine import orgs
from trace_core.engine.analytics import (
    AnalyticsJob,
    Checker,
    CheckOutcome,
    Computation,
    Result,
    applied_jobs,
    committed_ranges,
    computations,
    kind_outputs,
    run_computation,
)
from trace_core.engine.intake import ORG_TAG
from trace_core.engine.streams import parse_partition_key, range_partition_key
from trace_core.errors import TraceError
from trace_core.runtime import Runtime
from trace_dagster.partitions import partitions_def_name, stream_asset_key
from trace_dagster.resources import TraceResource

log = logging.getLogger(__name__)

GROUP = "analytics"
# A per-range run's input range (its partition is the range's epoch).
RANGE_TAG = "trace/range"


_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def analytics_asset_key(job: str, name: str, prefix: str | None = None) -> AssetKey:
    """``analytics/<job>/<name>`` (job name made key-safe as for the stream assets); another
    org's under its key prefix (``engine.orgs.key_prefix``)."""
    path = ["analytics", _UNSAFE.sub("_", job), name]
    return AssetKey([prefix, *path] if prefix else path)


def duckdb_resource(rt: Runtime) -> DuckDBResource:
    """In-memory DuckDB per run: inputs and outputs live in the object store, not in DuckDB."""
    return DuckDBResource(database=":memory:")


def _metadata(result: Result, name: str) -> dict[str, Any]:
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


def _check_result(
    job: str, asset: str, outcome: CheckOutcome, prefix: str | None = None
) -> AssetCheckResult:
    """A skipped check (nothing compared) is not a pass: it shows as a WARN-severity failure
    whose description starts with ``skipped:`` and whose metadata says ``skipped: true``."""
    return AssetCheckResult(
        asset_key=analytics_asset_key(job, asset, prefix),
        check_name=outcome.name,
        passed=outcome.passed and not outcome.skipped,
        severity=AssetCheckSeverity.WARN if outcome.skipped else AssetCheckSeverity.ERROR,
        description=outcome.description,
        metadata={
            "details": MetadataValue.json(dict(outcome.metadata)),
            "skipped": outcome.skipped,
        },
    )


def _run(
    context: AssetExecutionContext,
    trace: TraceResource,
    duckdb: DuckDBResource,
    job: AnalyticsJob,
    stream: str,
    fn: Callable[..., Result],
    names: Sequence[str],
    checkers: Sequence[tuple[str, Checker]] = (),
    org: str | None = None,
) -> Iterator[MaterializeResult | AssetCheckResult]:
    rt = trace.get_client().for_org(org)
    prefix = orgs.runtime_prefix(rt)
    ranges: list[tuple[int, int]] = []
    try:
        if context.has_partition_key:
            ranges = _ranges_to_run(context, rt, job, stream)
            if not ranges:
                raise Failure(description=f"epoch {context.partition_key}: nothing committed")
        with duckdb.get_connection() as con:
            result, outcomes = run_computation(
                rt, con, job, fn, ranges if context.has_partition_key else None, checkers
            )
    except TraceError as exc:
        raise Failure(description=f"{type(exc).__name__}: {exc}") from exc
    context.log.info(f"job {job.job}: committed {', '.join(names)} {result.summary or ''}")
    for name in names:
        meta = _metadata(result, name)
        if ranges:
            meta["ranges"] = MetadataValue.text(
                ", ".join(range_partition_key(a, b) for a, b in ranges)
            )
        yield MaterializeResult(asset_key=analytics_asset_key(job.job, name, prefix), metadata=meta)
    for asset, outcome in outcomes:
        yield _check_result(job.job, asset, outcome, prefix)


def _ranges_to_run(
    context: AssetExecutionContext, rt: Runtime, job: AnalyticsJob, stream: str
) -> list[tuple[int, int]]:
    """The input ranges a per-range run computes: the one its ``trace/range`` tag names (the
    sensor's runs), else every committed range of the partition's epoch (a UI launch)."""
    tagged = context.run.tags.get(RANGE_TAG)
    if tagged:
        return [parse_partition_key(tagged)]
    start, end = parse_partition_key(context.partition_key)
    return committed_ranges(rt, job.job, stream, start, end)


def _spec(
    job: AnalyticsJob,
    name: str,
    description: str,
    deps: Sequence[AssetKey],
    prefix: str | None = None,
    org: str | None = None,
) -> AssetSpec:
    return AssetSpec(
        key=analytics_asset_key(job.job, name, prefix),
        tags={ORG_TAG: org} if org else None,
        deps=list(deps),
        description=description,
        group_name=GROUP,
        kinds={"duckdb", "parquet"},
        metadata={"dataset": f"analytics_{name}", "chain_id": job.chain_id},
    )


def _asset(
    job: AnalyticsJob,
    c: Computation,
    stream: str,
    prefix: str | None = None,
    org: str | None = None,
) -> AssetsDefinition:
    """One multi-asset for one catalog row: its outputs, deps, partitions and checks (another
    org's under its key ``prefix``, run as ``org``)."""
    if c.reads is None:
        deps = [stream_asset_key(job.job, stream, prefix)]
    else:
        deps = [analytics_asset_key(job.job, c.reads, prefix)]
    checkers = [chk for chk in c.checks if chk.applies(job)]
    op_name = f"{prefix}__{job.job}" if prefix else job.job

    @multi_asset(
        name=f"{_UNSAFE.sub('_', op_name)}__{c.op}",
        specs=[_spec(job, name, description, deps, prefix, org) for name, description in c.outputs],
        check_specs=[
            AssetCheckSpec(
                chk.name,
                asset=analytics_asset_key(job.job, chk.asset, prefix),
                description=chk.description,
            )
            for chk in checkers
        ],
        partitions_def=(
            DynamicPartitionsDefinition(name=partitions_def_name(job.job, stream, prefix))
            if c.partitioned
            else None
        ),
        can_subset=False,
    )
    def _compute(
        context: AssetExecutionContext, trace: TraceResource, duckdb: DuckDBResource
    ) -> Iterator[Any]:
        yield from _run(
            context,
            trace,
            duckdb,
            job,
            stream,
            c.fn,
            c.names,
            [(chk.asset, chk.fn) for chk in checkers],
            org,
        )

    return _compute


def job_assets(
    job: AnalyticsJob, prefix: str | None = None, org: str | None = None
) -> list[AssetsDefinition]:
    """The analytics assets of one job (balances and supply, staking: whichever it sets), one
    per row of ``trace_core.analytics.CATALOG``."""
    return [_asset(job, c, stream, prefix, org) for c, stream in computations(job)]


# --- automation: a sensor requests due work (trace_core.analytics.plan) ---------------------

# What ``define_asset_job`` returns (its class is not public Dagster API).
AssetJob = Any


def job_name(job: str, kind: str, prefix: str | None = None) -> str:
    return f"analytics__{_UNSAFE.sub('_', f'{prefix}__{job}' if prefix else job)}__{kind}"


def analytics_jobs(jobs: Sequence[AnalyticsJob], prefix: str | None = None) -> list[AssetJob]:
    """One asset job per (analytics job, kind) the sensor can request (of the org whose key
    prefix is ``prefix``)."""
    return [
        define_asset_job(
            job_name(job.job, kind, prefix),
            selection=AssetSelection.assets(
                *(analytics_asset_key(job.job, n, prefix) for n in names)
            ),
            description=f"analytics {kind} of job {job.job}",
            # one small DuckDB step per run: a subprocess per step cost ~5 s for <1 s of work
            executor_def=in_process_executor,
        )
        for job in jobs
        for kind, names in kind_outputs(job).items()
    ]


def analytics_definitions(
    rt: Runtime,
) -> tuple[list[AssetsDefinition], list[AssetJob]]:
    """Assets and asset jobs for every applied job with analytics of every org (none if state
    is down)."""
    try:
        applied = [
            (orgs.runtime_prefix(o), str(o.settings.org_id), applied_jobs(o))
            for o in orgs.work_runtimes(rt)
        ]
    except TraceError as exc:
        log.warning("no analytics assets: state unavailable (%s)", exc)
        applied = []
    assets = [a for p, org, jobs in applied for job in jobs for a in job_assets(job, p, org)]
    return assets, [j for p, _org, jobs in applied for j in analytics_jobs(jobs, p)]
