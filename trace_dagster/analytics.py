"""Analytics assets (the Monad demos) over chain_sync streams, built with dagster-duckdb.

Per job with an ``analytics:`` block:

- per-range assets, partitioned by their input stream's own dynamic partitions (same
  definition name, so the same block-range keys): ``analytics/<job>/balance_changes`` and
  ``.../supply_deltas`` from the balance-diffs stream, ``.../staking_events`` from the logs
  stream. A new committed range recomputes only its partition; re-materializing a
  partition over the same input versions registers nothing new (deterministic versions).
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
from collections.abc import Iterator, Sequence
from typing import Any

from dagster import (
    AssetCheckResult,
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
from dagster_duckdb import DuckDBResource

from trace_core.engine.analytics import (
    KIND_OUTPUTS,
    AnalyticsJob,
    AssetGroup,
    analytics_jobs,
    checks,
    compute,
    compute_group,
    family_stream,
    groups_of,
    kinds_of,
)
from trace_core.engine.streams import parse_partition_key
from trace_core.errors import TraceError
from trace_core.runtime import Runtime
from trace_dagster.partitions import partitions_def_name, stream_asset_key
from trace_dagster.resources import TraceResource

log = logging.getLogger(__name__)

GROUP = "analytics"
# what define_asset_job returns (its class is not public Dagster API)
AssetJob = Any


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
    }


def _check_result(job: str, asset: str, outcome: checks.CheckOutcome) -> AssetCheckResult:
    return AssetCheckResult(
        asset_key=analytics_asset_key(job, asset),
        check_name=outcome.name,
        passed=outcome.passed,
        description=outcome.description,
        metadata={"details": MetadataValue.json(dict(outcome.metadata))},
    )


def _run(
    context: AssetExecutionContext,
    trace: TraceResource,
    duckdb: DuckDBResource,
    job: AnalyticsJob,
    group: AssetGroup,
) -> Iterator[MaterializeResult | AssetCheckResult]:
    rt = trace.get_client()
    try:
        with duckdb.get_connection() as con:
            block_range = (
                parse_partition_key(context.partition_key) if context.has_partition_key else None
            )
            result, outcomes = compute_group(rt, con, job, group, block_range)
    except TraceError as exc:
        raise Failure(description=f"{type(exc).__name__}: {exc}") from exc
    context.log.info(f"job {job.job}: committed {', '.join(group.names)} {result.summary or ''}")
    for name in group.names:
        yield MaterializeResult(
            asset_key=analytics_asset_key(job.job, name), metadata=_metadata(result, name)
        )
    for asset, outcome in outcomes:
        yield _check_result(job.job, asset, outcome)


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


def group_asset(job: AnalyticsJob, group: AssetGroup) -> AssetsDefinition:
    """One ``@multi_asset`` for a row of ``analytics.catalog.ASSET_GROUPS``: its outputs depend
    on the family's stream (or on the outputs it reads), partitioned like that stream if the
    group is per range, with the group's checks."""
    stream = family_stream(job, group.family)
    assert stream is not None
    key = lambda n: analytics_asset_key(job.job, n)  # noqa: E731
    deps = [key(n) for n in group.inputs] or [stream_asset_key(job.job, stream)]

    @multi_asset(
        name=f"{key(group.names[0]).path[1]}__{group.op}",
        specs=[_spec(job, name, description, deps) for name, description in group.outputs],
        check_specs=[
            AssetCheckSpec(c.name, asset=key(c.asset), description=c.description)
            for c in group.checks
        ],
        partitions_def=(
            DynamicPartitionsDefinition(name=partitions_def_name(job.job, stream))
            if group.partitioned
            else None
        ),
        can_subset=False,
    )
    def _group(
        context: AssetExecutionContext, trace: TraceResource, duckdb: DuckDBResource
    ) -> Iterator[Any]:
        yield from _run(context, trace, duckdb, job, group)

    return _group


def job_assets(job: AnalyticsJob) -> list[AssetsDefinition]:
    """The analytics assets of one job (balances and supply, staking: whichever it sets)."""
    return [group_asset(job, group) for group in groups_of(job)]


# --- automation: a sensor requests due work (trace_core.analytics.plan) ---------------------


def job_name(job: str, kind: str) -> str:
    return f"analytics__{_UNSAFE.sub('_', job)}__{kind}"


def analytics_job_defs(jobs: Sequence[AnalyticsJob]) -> list[AssetJob]:
    """One asset job per (analytics job, kind) the sensor can request."""
    out = []
    for job in jobs:
        for kind in kinds_of(job):
            keys = [analytics_asset_key(job.job, n) for n in KIND_OUTPUTS[kind]]
            out.append(
                define_asset_job(
                    job_name(job.job, kind),
                    selection=AssetSelection.assets(*keys),
                    description=f"analytics {kind} of job {job.job}",
                )
            )
    return out


def analytics_definitions(rt: Runtime) -> tuple[list[AssetsDefinition], list[AssetJob]]:
    """Assets and asset jobs for every applied job with analytics (none if state is down)."""
    try:
        jobs = analytics_jobs(rt)
    except TraceError as exc:
        log.warning("no analytics assets: state unavailable (%s)", exc)
        jobs = []
    return [a for job in jobs for a in job_assets(job)], analytics_job_defs(jobs)
