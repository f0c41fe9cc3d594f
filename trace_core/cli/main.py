"""``trace-lite`` commands that need no Dagster: migrate, apply, status, pause/resume, retry,
query, token, query-service, gc, dlq. Errors print one clear line and exit non-zero.

Each command imports what it needs inside its body and the other modules' commands load on
first use (``LazyGroup``): ``trace-lite status`` stays a short process (see
tests/unit/test_cli_imports.py for what it must not import)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from trace_core.cli.common import ORG, console, err_console, handle_errors, org_option, runtime
from trace_core.cli.lazy import LazyGroup
from trace_core.settings import load_settings

if TYPE_CHECKING:
    from psycopg import Connection

    from trace_core.runtime import Runtime

# command name -> "module:attribute", imported when the command runs (or for --help)
LAZY_COMMANDS = {
    "dlq": "trace_core.cli.dlq:dlq",
    "alerts": "trace_core.cli.alerts:alerts",
    "retry": "trace_core.cli.retry:retry",
    "verify": "trace_core.cli.verify:verify",
    "compact": "trace_core.cli.compact:compact",
    "transforms": "trace_core.cli.transforms:transforms",
    "trigger": "trace_core.cli.transforms:trigger",
    "udf": "trace_core.cli.udf:udf",
    "org": "trace_core.cli.tenancy:org",
    "user": "trace_core.cli.tenancy:user",
    "key": "trace_core.cli.tenancy:key",
}


@click.group(cls=LazyGroup, lazy_subcommands=LAZY_COMMANDS)
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level to stderr")
@click.option(
    "--org",
    "org_name",
    default=None,
    help="Org name for every tenant command (as that org's tenant; default: the deployment's)",
)
def cli(verbose: bool, org_name: str | None) -> None:
    """Trace Lite: EVM chain data into versioned Parquet, on Dagster."""
    from trace_core.logs import configure_logging

    ORG.set(org_name)
    json_logs = os.environ.get("TRACE_LOG_FORMAT", "").lower() == "json"
    configure_logging(logging.INFO if verbose else logging.WARNING, "json" if json_logs else "text")


@cli.command()
@handle_errors
def migrate() -> None:
    """Apply state and data migrations (idempotent, safe to run concurrently)."""
    from trace_core.db.migrate import migrate as run_migrate

    rt = runtime()
    applied = run_migrate(rt.dbs)
    for which, ids in applied.items():
        console.print(
            f"{which}: {len(ids)} migration(s) applied" + (f" ({', '.join(ids)})" if ids else "")
        )


def _ensure_migrated(rt: Runtime) -> None:
    from trace_core.db.migrate import migrate as run_migrate

    run_migrate(rt.dbs)


@cli.command()
@click.option("--file", "file_", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--strict", is_flag=True, help="Also require every rpc_pool's TRACE_RPC_POOL_<POOL>_URL"
)
@org_option
@handle_errors
def apply(file_: Path, strict: bool) -> None:
    """Apply a chain_sync or transform YAML job (idempotent; an edit keeps cursors and the
    paused flag)."""
    from trace_core.chain_sync import store
    from trace_core.chain_sync.yamlload import load_job_file, read_capped
    from trace_core.cli.transforms import apply_transform_file
    from trace_core.transforms.spec import is_transform_document

    if is_transform_document(read_capped(file_)):
        apply_transform_file(file_)
        return
    spec, raw = load_job_file(file_, require_pools=strict)
    rt = runtime()
    _ensure_migrated(rt)
    with rt.state() as conn:
        result = store.apply_job(conn, rt.settings.org_id, spec, raw, str(file_))
    verb = "created" if result.created else ("updated" if result.changed else "unchanged")
    console.print(f"job_id={result.job_id} name={spec.name} {verb}")


def _render_status(jobs: list[dict[str, Any]], queue: dict[str, Any] | None) -> None:
    from rich.table import Table
    from rich.text import Text

    for job in jobs:
        state = "paused" if not job.get("enabled", True) else "enabled"
        console.print(
            f"[bold]{job['name']}[/bold] ({job['job_id']}) chain {job['chain_id']} "
            f"{job['mode']} [{state}]",
            highlight=False,
        )
        table = Table(show_header=True, header_style="bold")
        for col in (
            "stream",
            "cursor",
            "sched",
            "run",
            "done",
            "fake",
            "dead",
            "%",
            "blk/s",
            "eta",
            "blocked",
        ):
            table.add_column(col)
        for s in job.get("streams", []):
            pct = s.get("percent_done")
            eta = s.get("eta_seconds")
            table.add_row(
                s["dataset_key"],
                str(s.get("next_block")),
                str(s.get("scheduled", 0)),
                str(s.get("running", 0)),
                str(s.get("completed", 0)),
                str(s.get("fake_ranges", 0)),
                str(s.get("dead", 0)),
                "" if pct is None else f"{pct:.1f}",
                ""
                if not s.get("throughput_blocks_per_s")
                else f"{s['throughput_blocks_per_s']:.0f}",
                "" if eta is None else f"{eta:.0f}s",
                Text(s.get("blocked_reason") or ""),  # errors may hold [brackets]: no markup
            )
        console.print(table)
        fake = sum(s.get("fake_ranges", 0) for s in job.get("streams", []))
        if fake:
            console.print(
                f"[bold red]FAKE DATA[/bold red]: {fake} committed range(s) are made-up "
                "(TRACE_CRYO_MODE=fake), not the chain's; queries refuse them unless "
                "TRACE_QUERY_ALLOW_FAKE=true",
                highlight=False,
            )
        _render_dead_ranges(job)
        hot = job.get("hot")
        if hot:
            console.print(
                f"hot: pool {hot['rpc_pool']} cursor {hot['cursor']} head {hot['observed_head']} "
                f"lag {hot['lag_blocks']} starts at {hot['start_block']} "
                f"compact {'on' if hot['compact'] else 'off'}"
                + (f" blocked: {hot['blocked_reason']}" if hot.get("blocked_reason") else ""),
                highlight=False,
                soft_wrap=True,
            )
    if queue:
        console.print(
            "queue: depth={depth} in_flight={in_flight} oldest_age={oldest_age_seconds} "
            "dead_letters={dead} outbox_pending={outbox_pending}".format(**queue),
            highlight=False,
        )
        buf = queue.get("buffer")
        if buf:
            console.print(
                "buffer: depth={depth} in_flight={in_flight} dead_letters={dead}"
                " (trace-lite dlq list)".format(**buf),
                highlight=False,
            )


def _render_dead_ranges(job: dict[str, Any]) -> None:
    """Each dead range with its last error, until it is revived."""
    for s in job.get("streams", []):
        dead = s.get("dead_ranges") or []
        if not dead:
            continue
        console.print(
            f"dead ranges of {s['dataset_key']} ({s.get('dead', len(dead))}; revive with "
            f"trace-lite retry --job {job['name']} --stream {s['dataset_key']}):",
            highlight=False,
            markup=False,
        )
        for d in dead:
            console.print(
                f"  [{d['range_start']}, {d['range_end']}) task {d['task_id']} after "
                f"{d['attempts']}/{d['max_attempts']} attempt(s): "
                f"{d.get('last_error') or 'no error recorded'}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )


def queue_overview(rt: Runtime, conn: Connection[Any] | None = None) -> dict[str, Any]:
    """Wake-up and buffer queue health plus pending outbox rows. With pgqueue (Lite) and an
    open system connection ``conn``: read on it (pgqueue's own ``stats`` statement per queue,
    the outbox count), not through a queue driver, whose two connection pools cost a status
    process more than the reads."""
    from dataclasses import asdict

    from trace_core import outbox
    from trace_core.queue.base import BUFFER_QUEUE, TASK_WAKEUP

    if conn is None or rt.settings.queue_driver != "pgqueue":
        wake_stats, buf = rt.queue.stats(TASK_WAKEUP), rt.queue.stats(BUFFER_QUEUE)
        with rt.state() as own:
            _, pending = outbox.pending_counts(own)
    else:
        from trace_core.queue.pgstats import queue_stats

        wake_stats, buf = queue_stats(conn, TASK_WAKEUP), queue_stats(conn, BUFFER_QUEUE)
        _, pending = outbox.pending_counts(conn)
    wake = asdict(wake_stats)
    wake["dead"] = int(wake["dead"]) + buf.dead
    wake["outbox_pending"] = pending
    wake["buffer"] = {"depth": buf.depth, "in_flight": buf.in_flight, "dead": buf.dead}
    if wake.get("oldest_age_seconds") is not None:
        wake["oldest_age_seconds"] = round(float(wake["oldest_age_seconds"]), 1)
    return wake


@cli.command()
@click.option("--job", default=None, help="Job name or id (default: all jobs)")
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
@org_option
@handle_errors
def status(job: str | None, as_json: bool) -> None:
    """Per-stream progress, throughput, ETA and blocked reasons, plus queue health."""
    from trace_core.chain_sync import status as status_mod
    from trace_core.transforms.status import transform_status

    rt = runtime()
    _ensure_migrated(rt)
    with rt.state() as conn:
        jobs = status_mod.job_status(conn, rt.settings.org_id, job)
        transforms = [
            t
            for t in transform_status(conn, rt.settings.org_id)
            if job is None or job in (t["job"], t["name"])
        ]
        # the queues and outbox are shared by every org: the operator's view, not a tenant's
        queue = None if rt.tenant else queue_overview(rt, conn)
    if as_json:
        out = {"jobs": jobs, "transforms": transforms, "queue": queue}
        click.echo(json.dumps(out, indent=2, default=str))
    else:
        if not jobs:
            console.print("no chain_sync jobs applied yet (trace-lite apply --file ...)")
        _render_status(jobs, queue)
        _render_transforms(transforms)


def _render_transforms(transforms: list[dict[str, Any]]) -> None:
    """Transform jobs: triggers, runs by state and the last dead run's error."""
    if not transforms:
        return
    from rich.table import Table

    table = Table(show_header=True, header_style="bold", title="transforms")
    for col in ("transform", "job", "output", "triggers", "queued", "run", "done", "dead", "last"):
        table.add_column(col)
    for t in transforms:
        trig = [k if v is True else f"{k} {v}" for k, v in t["trigger"].items() if v]
        runs = t["runs"]
        table.add_row(
            t["name"] + ("" if t["enabled"] else " (paused)"),
            t["job"],
            t["output"],
            ", ".join(trig),
            str(runs["queued"]),
            str(runs["running"]),
            str(runs["succeeded"]),
            str(runs["dead"]),
            t["last_finished_at"] or "",
        )
    console.print(table)
    for t in transforms:
        if t["runs"]["dead"]:
            console.print(
                f"dead runs of transform {t['name']} ({t['runs']['dead']}): {t['last_error']}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )


def _set_enabled(job: str, enabled: bool) -> None:
    from trace_core.chain_sync import store

    rt = runtime()
    with rt.state() as conn:
        job_id = store.set_enabled(conn, rt.settings.org_id, job, enabled)
    console.print(f"job_id={job_id} {'resumed' if enabled else 'paused'}")


@cli.command()
@click.option("--job", required=True, help="Job name or id")
@org_option
@handle_errors
def pause(job: str) -> None:
    """Stop scheduling and claiming new work for a job (running tasks finish)."""
    _set_enabled(job, False)


@cli.command()
@click.option("--job", required=True, help="Job name or id")
@org_option
@handle_errors
def resume(job: str) -> None:
    """Resume a paused job."""
    _set_enabled(job, True)


@cli.command()
@click.option("--sql", required=True, help="One read-only SELECT/WITH statement")
@click.option("--job", default=None, help="Restrict relations to one chain_sync job")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON response")
@click.option(
    "--embedded",
    "mode",
    flag_value="embedded",
    help="Answer in this process even if a Query Service is up",
)
@click.option(
    "--http",
    "mode",
    flag_value="http",
    help="Require the Query Service (TRACE_QUERY_URL or the default address)",
)
@click.option(
    "--api-key",
    "api_key",
    default=None,
    envvar="TRACE_API_KEY",
    help="Query as this API key (its org and role; the same checks as over HTTP)",
)
@org_option
@handle_errors
def query(sql: str, job: str | None, as_json: bool, mode: str | None, api_key: str | None) -> None:
    """Run SQL through the Query Service (signs a local user token in Lite).

    With TRACE_QUERY_URL set, or a service answering at the default address, over HTTP;
    otherwise in this process through the same gate, sandbox, grants and audit (embedded),
    saying so on stderr."""
    from trace_core.query.client import Mode, choose_route, query_embedded, query_http

    rt = runtime()
    route = choose_route(rt.settings, cast(Mode, mode or "auto"))
    if route.mode == "embedded":
        err_console.print(route.notice, highlight=False, markup=False, soft_wrap=True)
        _ensure_migrated(rt)
        resp = query_embedded(rt.settings, rt.dbs, rt.store, sql, job, token=api_key)
    else:
        resp = query_http(rt.settings, sql, job, token=api_key)
    if as_json:
        click.echo(json.dumps(resp, indent=2, default=str))
        return
    from rich.table import Table

    table = Table(show_header=True, header_style="bold")
    for col in resp["columns"]:
        table.add_column(str(col["name"] if isinstance(col, dict) else col))
    for row in resp["rows"]:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)
    console.print(f"{resp['row_count']} row(s)" + (" (truncated)" if resp.get("truncated") else ""))
    export = resp.get("export")
    if export:  # over the inline caps: the rows are in one Parquet object, not in the table
        where = export.get("presigned_url") or export["uri"]
        console.print(f"exported as Parquet: {where}", soft_wrap=True, highlight=False)


@cli.command()
@handle_errors
def token() -> None:
    """Print a local user token for other HTTP clients of the Query Service."""
    from trace_core.query.client import local_user_token

    click.echo(local_user_token(load_settings()))


@cli.command("query-service")
@handle_errors
def query_service() -> None:
    """Run the Query Service in the foreground, with the HTTP API (/v1, /openapi.json) and the
    sources' webhook endpoint."""
    from trace_core.api import api_routes
    from trace_core.query.app import serve
    from trace_core.sources.webhook import webhook_routes

    rt = runtime()
    _ensure_migrated(rt)
    serve(rt.settings, routes=[*api_routes(rt.settings), *webhook_routes(rt.settings)])


@cli.command()
@click.option("--older-than", default=86400.0, show_default=True, help="Staging: seconds")
@click.option(
    "--versions",
    is_flag=True,
    help="Also collect superseded dataset versions past the grace period (registry tombstones)",
)
@click.option(
    "--grace-seconds",
    type=float,
    default=None,
    help="Versions: grace period after being superseded [default: TRACE_VERSION_GRACE_SECONDS]",
)
@click.option("--dry-run", is_flag=True, help="Show what would go; change nothing")
@handle_errors
def gc(older_than: float, versions: bool, grace_seconds: float | None, dry_run: bool) -> None:
    """Remove abandoned staging output older than a threshold (and, with --versions,
    superseded dataset versions), and report it."""
    from trace_core.datasets.gc import gc_staging
    from trace_core.datasets.retention import gc_versions

    rt = runtime()
    with rt.state() as conn:
        if dry_run:
            console.print("staging: not collected in a dry run", highlight=False)
        else:
            report = gc_staging(rt.settings, rt.store, older_than, conn=conn)
            console.print(str(report), highlight=False)
        if versions:
            grace = rt.settings.version_grace_seconds if grace_seconds is None else grace_seconds
            from rich.text import Text

            vreport = gc_versions(
                conn, rt.store, rt.settings.org_id, grace_seconds=grace, dry_run=dry_run
            )
            for line in vreport.lines():
                console.print(Text(line), highlight=False)


def main() -> None:
    cli(prog_name="trace-lite")


if __name__ == "__main__":
    main()
