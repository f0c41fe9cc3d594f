"""``trace-lite verify``: the integrity check of committed ranges, and their repair."""

from __future__ import annotations

import json
import sys

import click
from rich.table import Table

from trace_core.cli.common import console, handle_errors, runtime


@click.command()
@click.option("--job", default=None, help="Job name or id (default: every job)")
@click.option("--stream", default=None, help="Stream key (dataset_key) of the job")
@click.option("--range", "block_range", default=None, help="Blocks A-B, end-exclusive")
@click.option("--repair", is_flag=True, help="Re-sync each broken range as a new version")
@click.option("--no-rpc", is_flag=True, help="Skip the checks against the chain")
@click.option(
    "--all",
    "verify_all",
    is_flag=True,
    help="Every committed range of every stream (also what no selection means)",
)
@click.option(
    "--incremental",
    is_flag=True,
    help="What one scheduled pass verifies: new and changed ranges, then a sample of the "
    "stalest, within TRACE_INTEGRITY_RPC_CALLS_PER_PASS",
)
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON")
@handle_errors
def verify(
    job: str | None,
    stream: str | None,
    block_range: str | None,
    repair: bool,
    no_rpc: bool,
    verify_all: bool,
    incremental: bool,
    as_json: bool,
) -> None:
    """Verify committed ranges: files vs manifests (sha256, rows), contiguity, parent hashes,
    and tx/log counts vs the RPC. Exit 1 when something is broken (0 once --repair planned
    the fix; the worker then re-syncs it)."""
    from trace_core.db.migrate import migrate
    from trace_core.integrity import incremental as incremental_mod
    from trace_core.integrity import repair as repair_mod
    from trace_core.integrity.verify import parse_range
    from trace_core.integrity.verify import verify as run_verify

    if stream is not None and job is None:
        raise click.UsageError("--stream needs --job")
    if (verify_all or incremental) and (job or block_range or no_rpc):
        raise click.UsageError(
            "--all and --incremental take no --job, --stream, --range or --no-rpc"
        )
    if verify_all and incremental:
        raise click.UsageError("--all and --incremental exclude each other")
    span = parse_range(block_range) if block_range else None
    rt = runtime()
    migrate(rt.dbs)
    if incremental:
        reports = list(incremental_mod.scheduled_reports(rt))
    else:
        reports = run_verify(rt, job=job, stream=stream, block_range=span, use_rpc=not no_rpc)
        if not no_rpc:  # a verdict without the chain checks is not a full verification
            incremental_mod.record_verdicts(rt, reports)
    planned = repair_mod.repair(rt, reports) if repair else []
    if as_json:
        out = {
            "passed": all(r.passed for r in reports),
            "streams": [r.as_json() for r in reports],
            "repairs": [
                {
                    "job": p.job_name,
                    "stream": p.dataset_key,
                    "range": [p.range_start, p.range_end],
                    "task_id": str(p.task_id),
                    "new": p.created,
                }
                for p in planned
            ],
        }
        click.echo(json.dumps(out, indent=2))
    else:
        table = Table(show_header=True, header_style="bold")
        for col in ("job", "stream", "ranges", "chain", "result"):
            table.add_column(col)
        for r in reports:
            table.add_row(
                r.job_name,
                r.dataset_key,
                str(len(r.ranges)),
                "checked" if r.rpc_checked else "skipped",
                "ok" if r.passed else f"{len(r.findings)} finding(s)",
            )
        console.print(table)
        for r in reports:
            for f in r.findings:
                console.print(f"{r.job_name}/{r.dataset_key} {f.line()}", highlight=False)
            for note in r.notes:
                console.print(f"{r.job_name}/{r.dataset_key} note: {note}", highlight=False)
        for p in planned:
            console.print(
                f"repair {'planned' if p.created else 'already planned'}: {p.job_name}/"
                f"{p.dataset_key} [{p.range_start}, {p.range_end}) task {p.task_id}",
                highlight=False,
            )
    broken = not all(r.passed for r in reports)
    sys.exit(1 if broken and not planned else 0)
