"""``trace-lite dlq``: inspect, replay and purge dead letters of a queue (default: buffer).

Replay sends dead messages back to the live queue with a fresh receive count; for the buffer
queue, fix the batch object (or the code) first, since the sink re-validates everything.
Unknown ids are an error and nothing is changed. Errors exit 1 (2 for usage).
``--queue alert_deliveries`` manages failed alert deliveries the same way (``cli.alert_dlq``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import click

from trace_core.cli import alert_dlq
from trace_core.cli.common import handle_errors
from trace_core.queue.base import BUFFER_QUEUE, DeadMessage
from trace_core.runtime import Runtime
from trace_core.settings import load_settings

# Every dead letter is looked up before replay/purge/show; a DLQ bigger than this is a
# backlog to purge or replay with --all, not to page through by id.
LOOKUP_LIMIT = 10_000
_ERROR_WIDTH = 100

queue_option = click.option(
    "--queue", default=BUFFER_QUEUE, show_default=True, help="Queue whose dead letters to manage"
)


def _with_runtime(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        rt = Runtime(load_settings())
        try:
            return fn(rt, *args, **kwargs)
        finally:
            rt.close()

    return wrapper


@click.group()
def dlq() -> None:
    """Dead letters: messages that failed max_receive_count times (list, show, replay, purge)."""


def _as_dict(m: DeadMessage) -> dict[str, Any]:
    return asdict(m)


def _lookup(rt: Runtime, queue: str, ids: Sequence[str]) -> list[DeadMessage]:
    """The dead letters with these ids, in the given order; unknown ids raise ClickException."""
    by_id = {m.message_id: m for m in rt.queue.list_dead(queue, limit=LOOKUP_LIMIT)}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise click.ClickException(
            f"no dead letter with id {', '.join(unknown)} on queue {queue!r} "
            "(see `trace-lite dlq list`); nothing changed"
        )
    return [by_id[i] for i in dict.fromkeys(ids)]


def _targets(ids: tuple[str, ...], all_: bool) -> None:
    if all_ and ids:
        raise click.UsageError("give message ids or --all, not both")
    if not all_ and not ids:
        raise click.UsageError("give one or more message ids, or --all")


@dlq.command("list")
@queue_option
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON")
@handle_errors
@_with_runtime
def list_(rt: Runtime, queue: str, limit: int, as_json: bool) -> None:
    """Dead letters of a queue, oldest first."""
    if queue == alert_dlq.ALERT_DLQ:
        return alert_dlq.list_cmd(rt, limit, as_json)
    dead = rt.queue.list_dead(queue, limit=limit)
    if as_json:
        click.echo(json.dumps([_as_dict(m) for m in dead], indent=2, default=str))
        return
    if not dead:
        click.echo(f"no dead letters on queue {queue!r}")
    for m in dead:
        p = m.payload
        what = p.get("batch_key") or p.get("task_id") or ""
        error = (m.last_error or "").replace("\n", " ")
        if len(error) > _ERROR_WIDTH:
            error = error[: _ERROR_WIDTH - 3] + "..."
        click.echo(
            f"{m.message_id}\t{p.get('destination', '-')}\t{what}\t"
            f"receives={m.receive_count}\t{m.reason}\t{error}"
        )
    if dead:
        click.echo(f"{len(dead)} dead letter(s) on queue {queue!r}")
    if queue == BUFFER_QUEUE and (failed := alert_dlq.count(rt)):
        click.echo(f"and {failed} failed alert deliveries: dlq list --queue {alert_dlq.ALERT_DLQ}")


@dlq.command()
@click.argument("message_id")
@queue_option
@handle_errors
@_with_runtime
def show(rt: Runtime, message_id: str, queue: str) -> None:
    """One dead letter as JSON: its pointer payload, receives, reason and last error."""
    if queue == alert_dlq.ALERT_DLQ:
        return alert_dlq.show_cmd(rt, message_id)
    (m,) = _lookup(rt, queue, [message_id])
    click.echo(json.dumps(_as_dict(m), indent=2, default=str))


@dlq.command()
@click.argument("message_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Replay every dead letter of the queue")
@queue_option
@handle_errors
@_with_runtime
def replay(rt: Runtime, message_ids: tuple[str, ...], all_: bool, queue: str) -> None:
    """Send dead letters back to the live queue (receive count reset). Fix the cause first."""
    _targets(message_ids, all_)
    if queue == alert_dlq.ALERT_DLQ:
        return alert_dlq.replay_cmd(rt, message_ids, all_)
    if all_:
        n = rt.queue.replay_dead(queue)
    else:
        found = _lookup(rt, queue, message_ids)
        n = rt.queue.replay_dead(queue, [m.message_id for m in found])
    click.echo(f"replayed {n} dead letter(s) to queue {queue!r}")


@dlq.command()
@click.argument("message_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Purge every dead letter of the queue")
@click.option("--yes", is_flag=True, help="Confirm: purged messages are gone for good")
@queue_option
@handle_errors
@_with_runtime
def purge(rt: Runtime, message_ids: tuple[str, ...], all_: bool, yes: bool, queue: str) -> None:
    """Delete dead letters for good (requires --yes)."""
    _targets(message_ids, all_)
    if not yes:
        raise click.UsageError("purge deletes dead letters for good; pass --yes to confirm")
    if queue == alert_dlq.ALERT_DLQ:
        return alert_dlq.purge_cmd(rt, message_ids, all_)
    if all_:
        n = rt.queue.purge_dead(queue)
    else:
        found = _lookup(rt, queue, message_ids)
        n = rt.queue.purge_dead(queue, [m.message_id for m in found])
    click.echo(f"purged {n} dead letter(s) from queue {queue!r}")
