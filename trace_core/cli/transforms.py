"""``trace-lite transforms ...`` and ``trace-lite trigger JOB``: transform jobs and manual runs.

``trace-lite apply --file T.yaml`` hands ``kind: transform`` files here. Bad files exit 2
with ``file:line: field: message``; a refused trigger exits 1 with its reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from trace_core.cli.common import console, handle_errors, runtime
from trace_core.runtime import Runtime


def _runtime() -> Runtime:
    from trace_core.db.migrate import migrate

    rt = runtime()  # as --org's tenant when given (trace-lite --org NAME ...)
    migrate(rt.dbs)
    return rt


def apply_transform_file(file_: Path) -> None:
    """Validate (YAML and its UDF) before touching state, then apply."""
    from trace_core.transforms.spec import load_transform_file
    from trace_core.transforms.store import apply_transform

    loaded = load_transform_file(file_)
    rt = _runtime()
    try:
        result = apply_transform(rt, loaded, str(file_))
    finally:
        rt.close()
    verb = "created" if result.created else ("updated" if result.changed else "unchanged")
    code = f" bundle={result.bundle_sha256[:12]}" if result.bundle_sha256 else ""
    console.print(
        f"transform_id={result.transform_id} name={loaded.spec.name} {verb}{code}",
        highlight=False,
    )


@click.group()
def transforms() -> None:
    """Transform jobs (kind: transform) and their source events."""


@transforms.command("apply")
@click.option("--file", "file_", required=True, type=click.Path(dir_okay=False, path_type=Path))
@handle_errors
def apply_cmd(file_: Path) -> None:
    """Apply a transform YAML file (idempotent; its UDF is stored as a bundle)."""
    apply_transform_file(file_)


@transforms.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
@handle_errors
def list_cmd(as_json: bool) -> None:
    """Transform jobs of the org with their triggers."""
    from trace_core.transforms.store import list_transforms

    rt = _runtime()
    try:
        with rt.state() as conn:
            rows = [t.as_json() for t in list_transforms(conn, rt.settings.org_id)]
    finally:
        rt.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("name", "job", "inputs", "output", "code", "triggers")
    for t in rows:
        trig = [k for k, v in t["trigger"].items() if v]
        table.add_row(
            t["name"], t["job"], ",".join(t["inputs"]), t["output"], t["code"], ",".join(trig)
        )
    console.print(table)


@click.command()
@click.argument("job")
@click.option(
    "--key",
    default=None,
    help="Idempotency key (default: a fingerprint of the pinned input versions, so a second "
    "launch over the same data is the same run)",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
@handle_errors
def trigger(job: str, key: str | None, as_json: bool) -> None:
    """Run a transform job now (manual source): one run per idempotency key."""
    from trace_core.sources.trigger import trigger as record

    rt = _runtime()
    try:
        with rt.state() as conn:
            got = record(
                conn,
                rt.settings.org_id,
                job,
                "manual",
                idempotency_key=key,
                max_attempts=rt.settings.max_attempts,
            )
    finally:
        rt.close()
    if as_json:
        click.echo(json.dumps(got.as_json()))
        return
    verb = "queued" if got.created else "already triggered (same key): no new run"
    console.print(f"{job}: task {got.task_id} {verb} (key {got.idempotency_key})", highlight=False)
