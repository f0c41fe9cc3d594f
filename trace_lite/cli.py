"""``trace-lite``: trace_core's commands plus those that drive Dagster (run, up, down, demo).

Dagster is imported inside the commands that need it, so ``trace-lite status`` stays quick
(trace_core.cli.main loads the other modules' commands on first use). No collections while
the modules load (they allocate long-lived objects only), which are then frozen (later
collections skip them), and so is everything at exit: the interpreter's last collections
walked every module's objects (0.1 s of CPU, seconds of wall time on a busy box).
"""

from __future__ import annotations

import gc

_GC_WAS_ENABLED = gc.isenabled()
gc.disable()

import atexit  # noqa: E402
import functools  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402

from trace_core.cli.common import console, handle_errors, runtime  # noqa: E402
from trace_core.cli.main import cli  # noqa: E402
from trace_core.settings import REPO_ROOT  # noqa: E402

gc.freeze()  # the modules' objects live as long as the process: later collections skip them
if _GC_WAS_ENABLED:
    gc.enable()

DEFAULT_DAGSTER_HOME = REPO_ROOT / "dagster_home"


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME defaults to the checkout's dagster_home/ (sqlite storage, Lite). A home
    without a dagster.yaml gets the checkout's (queued runs, at most two at once, no telemetry)."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(DEFAULT_DAGSTER_HOME))).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        shutil.copyfile(DEFAULT_DAGSTER_HOME / "dagster.yaml", config)
    return home


def _apply_then_reload() -> None:
    """``trace-lite apply`` is trace_core's ``apply`` followed by a reload of the running local
    Dagster webserver's definitions (``trace_lite.reload``), so the new job's assets are
    materializable in the UI at once; without a running stack it prints how to reload."""
    command = cli.commands["apply"]
    core = command.callback
    assert core is not None

    @functools.wraps(core)
    def callback(**kwargs: object) -> None:
        core(**kwargs)
        from trace_core.settings import load_settings
        from trace_lite.reload import reload_definitions

        for line in reload_definitions(load_settings()):
            console.print(line, highlight=False, markup=False)

    command.callback = callback


_apply_then_reload()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def interrupt_on_signals() -> None:
    """SIGINT and SIGTERM both unwind as KeyboardInterrupt, so every ``finally`` that stops a
    service runs (SIGINT included when a shell started us with it ignored)."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


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

    from trace_core.db.embedded import embedded_stopped
    from trace_core.db.migrate import migrate
    from trace_dagster.definitions import build_definitions
    from trace_dagster.driver import drive_until_idle

    rt = runtime()
    migrate(rt.dbs)
    defs = build_definitions(rt)
    home = rt.settings.resolved_home()
    embedded = rt.settings.database_url is None and rt.settings.state_url is None
    with DagsterInstance.get() as instance:
        report = drive_until_idle(
            rt,
            defs,
            instance,
            timeout=timeout,
            # the embedded server dying is not a restart: stop now, the rerun starts it again
            state_gone=(lambda: embedded_stopped(home)) if embedded else None,
            on_tick=lambda r: console.print(
                f"tick {r.ticks}: runs={r.runs} failed_runs={r.failed_runs} planned={r.planned}"
                + (f" failed_ticks={r.failed_ticks}" if r.failed_ticks else ""),
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


@cli.command()
@click.option(
    "--exit", "exit_after", is_flag=True, help="Stop everything after printing the results"
)
@click.option(
    "--file",
    "job_file",
    default=None,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A fixed_target job YAML (default: examples/chain_sync.demo.yaml)",
)
@click.option("--port", default=3000, show_default=True, help="Dagster webserver port")
@click.option("--timeout", default=900.0, show_default=True, help="Give up after this many seconds")
@click.option(
    "--analytics",
    is_flag=True,
    help="The analytics demos (native supply, top accounts, staking concentration) instead",
)
@click.option(
    "--udf",
    is_flag=True,
    help="Also the example Python transform (ERC-20 volume) and Python alert (UDF sandbox)",
)
@handle_errors
def demo(
    exit_after: bool, job_file: Path | None, port: int, timeout: float, analytics: bool, udf: bool
) -> None:
    """Run Trace Lite end to end on a local chain and print result tables."""
    from trace_core.settings import load_settings
    from trace_lite.demo import DEMO_FILE, run_demo
    from trace_lite.demo_analytics import DEMO_ANALYTICS_FILE

    interrupt_on_signals()
    try:
        run_demo(
            load_settings(),
            console,
            job_file=job_file or (DEMO_ANALYTICS_FILE if analytics else DEMO_FILE),
            dagster_home=ensure_dagster_home(),
            dagster_port=port,
            exit_after=exit_after,
            timeout=timeout,
            analytics=analytics,
            udf=udf,
        )
    except KeyboardInterrupt:
        console.print("stopped")


@cli.command()
@click.option("--port", default=3000, show_default=True, help="Dagster webserver port")
@handle_errors
def up(port: int) -> None:
    """Start the local stack in the background: dagster dev and the Query Service."""
    from trace_core.db.migrate import migrate
    from trace_core.settings import load_settings
    from trace_lite.stack import LocalStack

    settings = load_settings()
    stack = LocalStack(settings, dagster_home=ensure_dagster_home(), dagster_port=port)
    stack.check_not_running()
    rt = runtime()
    migrate(rt.dbs)
    rt.close()
    with console.status("starting dagster dev and the Query Service..."):
        stack.start()
        try:
            stack.wait_ready()
        except BaseException:
            stack.stop()
            raise
    console.print(f"Dagster UI: {stack.dagster_url}\nQuery Service: {stack.query_url}")
    console.print(f"logs in {stack.logs}; stop with `trace-lite down`")


@cli.command()
@handle_errors
def down() -> None:
    """Stop what `trace-lite up` started, and the embedded Postgres."""
    from trace_core.settings import load_settings
    from trace_lite.stack import down as stop_stack

    stopped = stop_stack(load_settings())
    console.print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")


def main() -> None:
    # at exit, skip the interpreter's last collections over what the command imported
    atexit.register(gc.freeze)
    cli(prog_name="trace-lite")


if __name__ == "__main__":
    main()
