"""``trace-lite alerts``: apply alert YAML, list definitions, inspect deliveries and their
attempt history, and send a test event to a channel.

Webhook URLs are shown redacted (scheme, host and port only). Bad files exit 2 with
``file:line: field: message`` per problem; other errors exit 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from trace_core.cli.common import console, handle_errors, runtime
from trace_core.runtime import Runtime
from trace_core.settings import load_settings


def _runtime() -> Runtime:
    from trace_core.db.migrate import migrate

    rt = runtime()  # as --org's tenant when given (trace-lite --org NAME ...)
    migrate(rt.dbs)
    return rt


@click.group()
def alerts() -> None:
    """Alert definitions (YAML) and their deliveries."""


@alerts.command("apply")
@click.option("--file", "file_", required=True, type=click.Path(dir_okay=False, path_type=Path))
@handle_errors
def apply_cmd(file_: Path) -> None:
    """Apply an alert YAML file (idempotent; an edit updates the alert in place)."""
    from trace_core.alerts.spec import load_alert_file
    from trace_core.alerts.store import apply_alert
    from trace_core.udf.bundles import put_bundle

    loaded = load_alert_file(file_)
    rt = _runtime()
    try:
        with rt.state() as conn:
            result = apply_alert(
                conn,
                rt.settings.org_id,
                loaded,
                str(file_),
                bundles=lambda source: put_bundle(rt, source, name=f"alert:{loaded.spec.name}"),
            )
    finally:
        rt.close()
    verb = "created" if result.created else ("updated" if result.changed else "unchanged")
    console.print(f"alert_id={result.alert_id} name={loaded.spec.name} {verb}", highlight=False)


@alerts.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
@handle_errors
def list_cmd(as_json: bool) -> None:
    """Alert definitions of the org (webhook URLs redacted)."""
    from trace_core.alerts.store import list_alerts

    rt = _runtime()
    try:
        with rt.state() as conn:
            rows = [row.as_json() for row in list_alerts(conn, rt.settings.org_id)]
    finally:
        rt.close()
    if as_json:
        click.echo(json.dumps({"alerts": rows}, indent=2))
        return
    if not rows:
        console.print("no alerts applied yet (trace-lite alerts apply --file ...)")
        return
    table = Table(show_header=True, header_style="bold")
    for col in ("name", "job", "reads", "trigger", "severity", "enabled", "channels"):
        table.add_column(col)
    for row in rows:
        trigger = row["trigger"]
        when = ", ".join(
            (["on_commit"] if trigger.get("on_commit") else [])
            + ([f"every {trigger['schedule_seconds']}s"] if trigger.get("schedule_seconds") else [])
        )
        table.add_row(
            row["name"],
            row["job"],
            ", ".join(row["reads"]),
            when,
            row["severity"],
            "yes" if row["enabled"] else "no",
            "; ".join(row["channels"]),
        )
    console.print(table)


@alerts.command("deliveries")
@click.option("--alert", "alert_name", default=None, help="Only this alert's deliveries")
@click.option("--limit", default=50, show_default=True, help="Newest N deliveries")
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
@handle_errors
def deliveries_cmd(alert_name: str | None, limit: int, as_json: bool) -> None:
    """Recent deliveries: status, attempts, last HTTP status and error."""
    from trace_core.alerts.delivery import list_deliveries

    rt = _runtime()
    try:
        with rt.data() as conn:
            rows = list_deliveries(conn, alert_name=alert_name, limit=limit)
    finally:
        rt.close()
    if as_json:
        click.echo(json.dumps({"deliveries": rows}, indent=2, default=str))
        return
    table = Table(show_header=True, header_style="bold")
    for col in ("alert", "dedupe_key", "channel", "status", "attempts", "http", "error"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["alert_name"],
            r["dedupe_key"],
            r["channel_key"],
            r["status"],
            f"{r['attempts']}/{r['max_attempts']}",
            "" if r["last_status_code"] is None else str(r["last_status_code"]),
            r["last_error"] or "",
        )
    console.print(table)


@alerts.command("history")
@click.argument("delivery")
@handle_errors
def history_cmd(delivery: str) -> None:
    """One delivery's attempts: outcome, status code and error of each."""
    import uuid

    from trace_core.alerts.dead import attempts_of

    try:
        did = uuid.UUID(delivery)
    except ValueError:
        raise click.BadParameter("a delivery id (see `trace-lite alerts deliveries`)") from None
    rt = _runtime()
    try:
        with rt.data() as conn:
            rows = attempts_of(conn, did)
    finally:
        rt.close()
    if not rows:
        raise click.ClickException(f"no attempts recorded for delivery {did}")
    head = rows[0]
    click.echo(
        f"{head['alert_name']} {head['dedupe_key']} {head['channel_kind']}: {head['status']}"
    )
    for r in rows:
        code = "" if r["status_code"] is None else f" {r['status_code']}"
        click.echo(
            f"  attempt {r['attempt']} {r['started_at']:%Y-%m-%d %H:%M:%S} {r['outcome']}{code}"
            f" {r['duration_ms']}ms {r['error'] or ''}".rstrip()
        )


@alerts.command("test-channel")
@click.option(
    "--file", "file_", type=click.Path(dir_okay=False, path_type=Path), help="An alert YAML file"
)
@click.option("--alert", "alert_name", default=None, help="An applied alert, by name")
@click.option(
    "--channel",
    "which",
    default=None,
    help="Only this channel: its position (0-based) or type (slack, email, ...)",
)
@handle_errors
def test_channel_cmd(file_: Path | None, alert_name: str | None, which: str | None) -> None:
    """Send a synthetic event to an alert's channels now (no queue, no retries); exit 1 if a
    channel did not deliver. Secrets come from this process's TRACE_* environment."""
    from trace_core.alerts.probe import send_test
    from trace_core.alerts.spec import AlertSpec, load_alert_file
    from trace_core.alerts.store import get_alert

    if (file_ is None) == (alert_name is None):
        raise click.UsageError("give --file FILE or --alert NAME")
    spec: AlertSpec
    settings = load_settings()
    if file_ is not None:
        spec = load_alert_file(file_).spec
    else:
        rt = _runtime()
        try:
            with rt.state() as conn:
                spec = get_alert(conn, rt.settings.org_id, str(alert_name)).model()
        finally:
            rt.close()
    channels = list(spec.channels)
    if which is not None:
        if which.isdigit():
            channels = channels[int(which) : int(which) + 1]
        else:
            channels = [c for c in channels if c.kind == which]
        if not channels:
            raise click.UsageError(f"alert {spec.name!r} has no channel {which!r}")
    results = send_test(settings, spec.name, spec.severity, channels)
    failed = 0
    for channel, result in zip(channels, results, strict=True):
        code = "" if result.status_code is None else f" ({result.status_code})"
        error = f": {result.error}" if result.error else ""
        click.echo(f"{channel.describe()}: {result.outcome}{code}{error}")
        failed += result.outcome != "delivered"
    if failed:
        raise SystemExit(1)
