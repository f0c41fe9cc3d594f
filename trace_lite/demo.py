"""``trace-lite demo``: the whole of Trace Lite on one laptop, from nothing to result tables.

Steps: embedded Postgres + migrations, a local anvil chain seeded deterministically (unless
``TRACE_RPC_POOL_DEMO_URL`` points at a chain), apply the demo job (and the demo alerts when
the alert module is present, each with an extra webhook channel to a local echo receiver,
``trace_lite.echo``), start ``dagster dev`` and the Query Service, show a progress bar per
stream while the Dagster daemon's sensors and runs do the work, then print a tip query (hot +
cold), a backfill aggregate checked against the chain, and the alerts fired next to the
deliveries the echo receiver got.

The chain is deterministic (fixed genesis timestamp, one second per block), so a second demo
run resumes on the same Trace home: committed ranges stay committed and match the new anvil.
Shutdown (``--exit``, Ctrl-C, or an error) stops the services' process groups, anvil and the
embedded Postgres, in that order.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from trace_core.chain_sync.status import collect_status
from trace_core.chain_sync.store import apply_job_file
from trace_core.errors import TraceError
from trace_core.runtime import Runtime
from trace_core.settings import REPO_ROOT, Settings, rpc_pool_env_var, rpc_pool_url
from trace_lite.devtools.devchain import DevChain
from trace_lite.echo import EchoReceiver
from trace_lite.render import print_response
from trace_lite.stack import LocalStack, free_port, port_free

DEMO_FILE = REPO_ROOT / "examples" / "chain_sync.demo.yaml"
DEMO_POOL = "demo"
DEMO_SEED = 7
DEMO_GENESIS = 1_700_000_000
# Blocks the seeded chain has beyond the job's to_block: the hot follower's "tip".
TIP_BLOCKS = 100
MINE_INTERVAL_SECONDS = 2
# The echo receiver's port when free: a resumed demo then keeps the same webhook channel.
ECHO_PORT = 8790

TIP_SQL = """
SELECT b.block_number, count(t.transaction_hash) AS txs
FROM blocks AS b LEFT JOIN transactions AS t ON t.block_number = b.block_number
GROUP BY b.block_number HAVING count(t.transaction_hash) > 0
ORDER BY b.block_number DESC LIMIT 5
"""


def backfill_sql(start: int, end: int) -> str:
    where = f"block_number >= {start} AND block_number < {end}"
    return (
        f"SELECT (SELECT count(*) FROM blocks WHERE {where}) AS blocks, "
        f"(SELECT count(*) FROM transactions WHERE {where}) AS transactions, "
        f"(SELECT count(*) FROM logs WHERE {where}) AS logs"
    )


class DemoError(TraceError):
    code = "demo"


@dataclass
class DemoResult:
    """What the demo printed, for tests: the query responses and the chain's own counts."""

    job: str
    from_block: int
    to_block: int
    tip: dict[str, Any] = field(default_factory=dict)
    backfill: dict[str, Any] = field(default_factory=dict)
    chain_counts: dict[str, int] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    dagster_url: str = ""
    analytics: dict[str, Any] = field(default_factory=dict)
    echo_received: int = 0
    udf: dict[str, Any] = field(default_factory=dict)


def _start_chain(console: Console, blocks: int) -> DevChain:
    with console.status(f"mining a local anvil chain ({blocks} blocks, seed {DEMO_SEED})..."):
        chain = DevChain.start(blocks, DEMO_SEED, chain_id=31337, genesis_timestamp=DEMO_GENESIS)
    chain.rpc.call("evm_setIntervalMining", [MINE_INTERVAL_SECONDS])
    console.print(
        f"anvil at {chain.rpc_url} (chain 31337), mining a block every {MINE_INTERVAL_SECONDS}s"
    )
    return chain


def _progress(console: Console, rt: Runtime, job: str, deadline: float) -> None:
    """A bar per stream, from Postgres state, until every stream of ``job`` is complete."""
    with Progress(
        TextColumn("[bold]{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("blocks  {task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bars: dict[str, Any] = {}
        while True:
            with rt.state() as conn:
                (status,) = collect_status(conn, rt.settings.org_id, job)
            total = (status.to_block or 0) - status.from_block
            for s in status.streams:
                if s.dataset_key not in bars:
                    bars[s.dataset_key] = progress.add_task(s.dataset_key, total=total, detail="")
                detail = f"running {s.running}, done {s.completed}" + (
                    f", dead {s.dead}" if s.dead else ""
                )
                if s.blocked_reason:
                    detail += f"  [yellow]{s.blocked_reason}[/yellow]"
                progress.update(bars[s.dataset_key], completed=s.completed_blocks, detail=detail)
            if any(s.dead for s in status.streams):
                raise DemoError(
                    "a range ended dead; see `trace-lite status` and the failed run in the Dagster UI"
                )
            if status.done:
                return
            if time.monotonic() > deadline:
                raise DemoError("the demo job did not finish in time; see `trace-lite status`")
            time.sleep(1.0)


def _query(settings: Settings, sql: str, job: str) -> dict[str, Any]:
    from trace_core.query.client import query_http

    return query_http(settings, sql, job)


def run_demo(
    settings: Settings,
    console: Console,
    *,
    job_file: Path = DEMO_FILE,
    dagster_home: Path,
    dagster_port: int = 3000,
    exit_after: bool = False,
    timeout: float = 900.0,
    analytics: bool = False,
    udf: bool = False,
) -> DemoResult:
    """Run the demo; returns what it printed. Stops everything it started before returning
    (with ``exit_after``) or on Ctrl-C. ``analytics``: the Monad demos 2-4 instead
    (``trace_lite.demo_analytics``; default job ``examples/chain_sync.demo_analytics.yaml``).
    ``udf``: also the example transform and Python alert (``trace_lite.demo_udf``)."""
    from trace_core.chain_sync.yamlload import load_job_file
    from trace_core.db.migrate import migrate
    from trace_lite import demo_analytics, demo_udf

    settings, dagster_port = _pick_ports(console, settings, dagster_port)
    spec, _ = load_job_file(job_file)
    mode = spec.mode
    if mode.kind != "fixed_target":
        raise DemoError(f"{job_file}: the demo needs a fixed_target job")
    result = DemoResult(spec.name, mode.from_block, mode.to_block)
    deadline = time.monotonic() + timeout
    extra_env: dict[str, str] = {}
    stack: LocalStack | None = None
    chain: DevChain | None = None
    echo: EchoReceiver | None = None
    rt = Runtime(settings)
    try:
        stack = LocalStack(settings, dagster_home=dagster_home, dagster_port=dagster_port)
        stack.check_not_running()
        with console.status("starting Postgres and applying migrations..."):
            migrate(rt.dbs)
        pools = spec.pools
        if any(rpc_pool_url(p) is None for p in pools):
            chain = (
                demo_analytics.start_chain(
                    console, mode.to_block + TIP_BLOCKS, DEMO_SEED, DEMO_GENESIS
                )
                if analytics
                else _start_chain(console, mode.to_block + TIP_BLOCKS)
            )
            extra_env = {rpc_pool_env_var(p): chain.rpc_url for p in pools}
        else:
            console.print(f"using the configured RPC pool(s) {', '.join(pools)}")
        with rt.state() as conn, conn.transaction():
            applied = apply_job_file(conn, settings.org_id, job_file)
        console.print(
            f"applied {job_file.name}: job {spec.name!r} "
            + ("(new or changed)" if applied.changed else "(unchanged, resuming)")
        )
        echo = _apply_demo_alerts(console, rt, spec.name)
        if udf:
            demo_udf.apply_examples(console, rt, spec.name)
            extra_env = {**extra_env, **demo_udf.WEBHOOK.env()}
        stack = LocalStack(
            settings, dagster_home=dagster_home, dagster_port=dagster_port, extra_env=extra_env
        )
        with console.status("starting dagster dev (webserver + daemon) and the Query Service..."):
            stack.start()
            stack.wait_ready()
        result.dagster_url = stack.dagster_url
        console.print(
            f"Dagster UI: [link]{stack.dagster_url}[/link]  (asset group chain_sync/{spec.name})"
        )
        _progress(console, rt, spec.name, deadline)
        if analytics:
            result.analytics = demo_analytics.show(
                console, settings, rt, chain, spec.chain_id, mode.to_block, deadline
            )
            if spec.analytics is not None and spec.analytics.supply is not None:
                result.analytics["reconciles"] = demo_analytics.show_reconciliation(
                    console, stack.dagster_url, mode.to_block, deadline
                )
        else:
            if udf:
                result.udf = demo_udf.show(
                    console, settings, rt, spec.chain_id, mode.from_block, mode.to_block, deadline
                )
                result.udf["webhook"] = demo_udf.WEBHOOK.deliver_twice(console, stack.query_url)
            _show_results(console, settings, rt, result, chain, spec.chain_id, deadline, echo)
        console.print(f"\nDagster UI: {stack.dagster_url}   Query Service: {stack.query_url}")
        if not exit_after:
            console.print("running; press Ctrl-C to stop everything")
            while True:
                time.sleep(3600)
        return result
    finally:
        rt.close()
        _shutdown(console, stack, chain)
        if echo is not None:
            echo.stop()


def _pick_ports(console: Console, settings: Settings, dagster_port: int) -> tuple[Settings, int]:
    """The configured ports, or free ones (said aloud) when something else holds them."""
    if not port_free(settings.query_host, settings.query_port):
        port = free_port(settings.query_host)
        console.print(f"port {settings.query_port} is busy; the Query Service uses {port}")
        settings = settings.model_copy(update={"query_port": port, "query_url": None})
    if not port_free("127.0.0.1", dagster_port):
        port = free_port("127.0.0.1")
        console.print(f"port {dagster_port} is busy; the Dagster UI uses {port}")
        dagster_port = port
    return settings, dagster_port


def _apply_demo_alerts(console: Console, rt: Runtime, job: str) -> EchoReceiver | None:
    """Apply the examples/alerts/*.yaml written for ``job``, each with an extra webhook to a
    local echo receiver (started here, returned; None when no alert is for ``job``)."""
    from trace_core.alerts.channel_spec import Channel, WebhookChannel
    from trace_core.alerts.spec import load_alert_file
    from trace_core.alerts.store import apply_alert

    echo: EchoReceiver | None = None
    for path in sorted((REPO_ROOT / "examples" / "alerts").glob("*.yaml")):
        loaded = load_alert_file(path)
        if loaded.spec.job != job:
            continue
        spec = loaded.spec
        if rt.settings.alert_webhook_allow_private:
            # the echo receiver is on loopback: only reachable while private destinations are
            # allowed (the Lite default); with TRACE_ALERT_WEBHOOK_ALLOW_PRIVATE=false it is off
            if echo is None:
                echo = EchoReceiver.start(ECHO_PORT)
                console.print(f"echo receiver at {echo.url} (the demo alerts also deliver there)")
            to_echo = Channel(webhook=WebhookChannel(url=echo.url, timeout_seconds=2.0))
            spec = spec.model_copy(update={"channels": [*spec.channels, to_echo]})
        with rt.state() as conn, conn.transaction():
            apply_alert(conn, rt.settings.org_id, loaded._replace(spec=spec), str(path))
        extra = " + a webhook to the echo receiver" if echo is not None else ""
        console.print(f"applied alert {spec.name!r} ({path.name}){extra}")
    return echo


def _show_results(
    console: Console,
    settings: Settings,
    rt: Runtime,
    result: DemoResult,
    chain: DevChain | None,
    chain_id: int,
    deadline: float,
    echo: EchoReceiver | None = None,
) -> None:
    result.tip = _query(settings, TIP_SQL, result.job)
    print_response(
        console,
        f"Tip: the newest blocks with transactions (hot rows from block {result.to_block} on, "
        "cold Parquet below)",
        result.tip,
    )
    result.backfill = _query(settings, backfill_sql(result.from_block, result.to_block), result.job)
    print_response(
        console,
        f"Backfill: blocks [{result.from_block}, {result.to_block})",
        result.backfill,
    )
    if chain is not None:
        a, b = result.from_block, result.to_block
        result.chain_counts = {
            "blocks": chain.count_blocks(a, b),
            "transactions": chain.count_transactions(a, b),
            "logs": chain.count_logs(a, b),
        }
        got = dict(zip(["blocks", "transactions", "logs"], result.backfill["rows"][0], strict=True))
        verdict = (
            "[green]matches the chain[/green]"
            if got == result.chain_counts
            else "[red]differs from the chain[/red]"
        )
        console.print(f"chain over JSON-RPC: {result.chain_counts}: {verdict}")
    result.alerts = _settled_alerts(rt, result, chain_id, deadline)
    console.print("\n[bold]Alerts fired (examples/alerts/)[/bold]")
    arrivals = echo.arrivals() if echo is not None else {}
    table = Table(header_style="bold")
    for col in ("alert", "severity", "block", "transaction", "delivery", "echo receiver"):
        table.add_column(col)
    for ev in result.alerts:
        arrived = arrivals.get(ev["dedupe_key"])
        table.add_row(
            ev["alert_name"],
            ev["severity"],
            str(ev["block_number"]),
            _short(ev["tx_hash"]),
            ev["delivery"],
            f"received {arrived.first_at:%H:%M:%S}" if arrived else "-",
        )
    console.print(table)
    result.echo_received = sum(ev["dedupe_key"] in arrivals for ev in result.alerts)
    if echo is not None:
        console.print(
            f"the echo receiver got {result.echo_received} delivery(ies) in this run "
            "(one per event, however often a sender retried: Idempotency-Key)"
        )


def _short(tx_hash: str | None) -> str:
    """``0x1234abcd…90abcdef``: the table stays narrow enough for an 120-column terminal."""
    if not tx_hash:
        return ""
    return tx_hash if len(tx_hash) <= 20 else f"{tx_hash[:10]}…{tx_hash[-8:]}"


def _expected_evaluations(rt: Runtime, result: DemoResult, chain_id: int) -> set[uuid.UUID]:
    """Evaluation task ids the job's committed ranges must have produced: one per committed
    version of the stream each single-stream on_commit alert of the job reads (ids are
    deterministic, see ``alerts.routing.evaluation_task_id``)."""
    from trace_core.alerts.routing import evaluation_task_id
    from trace_core.alerts.store import list_alerts
    from trace_core.datasets.registry import versions_for_stream

    expected: set[uuid.UUID] = set()
    with rt.state() as conn:
        for alert in list_alerts(conn, rt.settings.org_id):
            if alert.job_name != result.job or not alert.on_commit or len(alert.reads) != 1:
                continue
            for v in versions_for_stream(conn, rt.settings.org_id, chain_id, alert.reads[0]):
                if result.from_block <= v.range_start and v.range_end <= result.to_block:
                    expected.add(evaluation_task_id(alert.alert_id, str(v.dataset_version)))
    return expected


def _settled_alerts(
    rt: Runtime, result: DemoResult, chain_id: int, deadline: float
) -> list[dict[str, Any]]:
    """The alert events with their delivery state, once evaluation and delivery have settled."""
    from trace_core.alerts.delivery import evaluations_settled, events_with_delivery

    expected = _expected_evaluations(rt, result, chain_id)
    while not evaluations_settled(rt, expected):
        if time.monotonic() > deadline:
            raise DemoError("alerts did not settle in time; see `trace-lite alerts deliveries`")
        time.sleep(1.0)
    return events_with_delivery(rt)


@contextlib.contextmanager
def _quiet_errors(console: Console, what: str) -> Iterator[None]:
    try:
        yield
    except (TraceError, OSError) as exc:
        console.print(f"[yellow]while stopping {what}: {exc}[/yellow]")


def _shutdown(console: Console, stack: LocalStack | None, chain: DevChain | None) -> None:
    console.print("stopping...")
    if stack is not None and stack.processes:
        with _quiet_errors(console, "the services"):
            stopped = stack.stop()
            console.print(f"stopped {', '.join(stopped)}")
    elif stack is not None and stack.record.embedded_postgres:
        from trace_core.db.embedded import stop_embedded

        with _quiet_errors(console, "Postgres"):
            stop_embedded(stack.home)
    if chain is not None:
        with _quiet_errors(console, "anvil"):
            chain.stop()
