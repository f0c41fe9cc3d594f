"""``trace-lite``: trace_core's commands plus those that drive Dagster (run, up, down, demo).

Dagster is imported inside the commands that need it, so ``trace-lite status`` stays quick.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from trace_core.cli.main import cli, console, handle_errors, runtime
from trace_core.settings import REPO_ROOT

DEFAULT_DAGSTER_HOME = REPO_ROOT / "dagster_home"


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME defaults to the checkout's dagster_home/ (sqlite storage, Lite)."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(DEFAULT_DAGSTER_HOME)))
    home.mkdir(parents=True, exist_ok=True)
    return home


@cli.command()
@click.option(
    "--until-idle", is_flag=True, required=True, help="Run until nothing is queued or running"
)
@click.option("--timeout", default=900.0, show_default=True, help="Give up after this many seconds")
@handle_errors
def run(until_idle: bool, timeout: float) -> None:
    """Drive the dispatcher and worker sensors and their runs in the foreground."""
    ensure_dagster_home()
    from dagster import DagsterInstance

    from trace_core.db.migrate import migrate
    from trace_dagster.definitions import build_definitions
    from trace_dagster.driver import drive_until_idle

    rt = runtime()
    migrate(rt.dbs)
    defs = build_definitions(rt)
    with DagsterInstance.get() as instance:
        report = drive_until_idle(
            rt,
            defs,
            instance,
            timeout=timeout,
            on_tick=lambda r: console.print(
                f"tick {r.ticks}: runs={r.runs} failed_runs={r.failed_runs} planned={r.planned}",
                highlight=False,
            ),
        )
    console.print(
        f"done: ticks={report.ticks} runs={report.runs} failed_runs={report.failed_runs} "
        f"dead_tasks={report.dead_tasks} idle={report.idle}",
        highlight=False,
    )
    if report.timed_out:
        console.print("[red]timed out before the work was idle[/red]")
        sys.exit(3)
    if report.dead_tasks:
        console.print(f"[red]{report.dead_tasks} task(s) ended dead[/red] (trace-lite status)")
        sys.exit(1)


def main() -> None:
    cli(prog_name="trace-lite")


if __name__ == "__main__":
    main()
