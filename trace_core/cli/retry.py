"""``trace-lite retry``: revive dead tasks / chain_sync ranges with a fresh attempt budget."""

from __future__ import annotations

import json

import click

from trace_core.chain_sync.revive import ReviveOutcome
from trace_core.cli.common import console, handle_errors, runtime


def _describe(o: ReviveOutcome) -> str:
    if o.revived:
        line = (
            f"revived task {o.task_id} ({o.label}) after {o.attempts} attempt(s); "
            f"fresh budget of {o.max_attempts}"
        )
        if o.last_error:
            line += f"; last error: {o.last_error}"
        if o.paused:
            line += "; its job is paused: it runs after `trace-lite resume`"
        return line
    return f"task {o.task_id} ({o.label}) is {o.status}: not dead, nothing to revive"


@click.command()
@click.option("--task", "tasks", multiple=True, metavar="ID", help="A dead task's id (repeatable)")
@click.option("--job", default=None, help="Job name or id: revive its dead ranges")
@click.option("--stream", default=None, help="Only this stream of --job")
@click.option(
    "--range",
    "block_range",
    default=None,
    metavar="START-END",
    help="Only this end-exclusive block range of --job (in --stream, or in every stream)",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
@handle_errors
def retry(
    tasks: tuple[str, ...],
    job: str | None,
    stream: str | None,
    block_range: str | None,
    as_json: bool,
) -> None:
    """Revive dead tasks or chain_sync ranges: each gets a fresh attempt budget and a wake-up
    through the outbox, and its stream plans again.

    \b
    trace-lite retry --task ID [--task ID ...]
    trace-lite retry --job J [--stream S] [--range START-END]

    All or nothing: an unknown task, job, stream or range exits 1 naming it and changes
    nothing. A task or range that is not dead is left as it is and reported (exit 0).
    """
    from trace_core.chain_sync.revive import parse_block_range, parse_task_id
    from trace_core.chain_sync.revive import retry as do_retry
    from trace_core.db.migrate import migrate

    if not tasks and job is None:
        raise click.UsageError(
            "name what to revive: --task ID, or --job J [--stream S] [--range A-B]"
        )
    if tasks and job is not None:
        raise click.UsageError("use --task or --job, not both")
    if job is None and (stream is not None or block_range is not None):
        raise click.UsageError("--stream and --range need --job")
    ids = [parse_task_id(t) for t in tasks]
    parsed_range = parse_block_range(block_range) if block_range is not None else None
    rt = runtime()
    migrate(rt.dbs)
    with rt.state() as conn:
        report = do_retry(
            conn,
            rt.settings.org_id,
            task_ids=ids,
            job=job,
            stream=stream,
            block_range=parsed_range,
            detail="trace-lite retry",
        )
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
        return
    if not report.outcomes:
        where = f"job {job}" + (f" stream {stream}" if stream else "")
        console.print(
            f"no dead ranges in {where}: nothing to revive", highlight=False, markup=False
        )
        return
    for o in report.outcomes:
        console.print(_describe(o), highlight=False, soft_wrap=True, markup=False)
    console.print(
        f"{len(report.revived)} revived, {len(report.not_dead)} not dead (unchanged)",
        highlight=False,
    )
