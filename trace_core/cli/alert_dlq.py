"""``trace-lite dlq ... --queue alert_deliveries``: failed alert deliveries as dead letters.

Ids are delivery ids. Replay gives a delivery ``TRACE_ALERT_DELIVERY_MAX_ATTEMPTS`` more
attempts (same delivery id, so the same idempotency/dedupe key); purge dismisses it (the row
and its attempt history stay). Unknown ids are an error and nothing is changed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import click

from trace_core.alerts.dead import ALERT_DLQ, dismiss_dead, list_dead, replay_dead
from trace_core.runtime import Runtime

_ERROR_WIDTH = 100


def _parse(ids: Sequence[str]) -> list[uuid.UUID]:
    try:
        return [uuid.UUID(i) for i in ids]
    except ValueError:
        raise click.ClickException(
            f"dead letters of {ALERT_DLQ!r} are named by delivery id (a UUID); nothing changed"
        ) from None


def _found(rt: Runtime, ids: Sequence[str]) -> list[uuid.UUID]:
    wanted = _parse(ids)
    with rt.data() as conn:
        found = {r["delivery_id"] for r in list_dead(conn, ids=wanted, limit=len(wanted) + 1)}
    unknown = [str(i) for i in wanted if i not in found]
    if unknown:
        raise click.ClickException(
            f"no dead letter with id {', '.join(unknown)} on queue {ALERT_DLQ!r} "
            "(see `trace-lite dlq list --queue alert_deliveries`); nothing changed"
        )
    return wanted


def _as_json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in row.items()}


def list_cmd(rt: Runtime, limit: int, as_json: bool) -> None:
    with rt.data() as conn:
        dead = list_dead(conn, limit=limit)
    if as_json:
        click.echo(json.dumps([_as_json(r) for r in dead], indent=2, default=str))
        return
    if not dead:
        click.echo(f"no dead letters on queue {ALERT_DLQ!r}")
        return
    for r in dead:
        error = (r["last_error"] or "").replace("\n", " ")
        if len(error) > _ERROR_WIDTH:
            error = error[: _ERROR_WIDTH - 3] + "..."
        click.echo(
            f"{r['delivery_id']}\t{r['channel_kind']}\t{r['dedupe_key']}\t"
            f"attempts={r['attempts']}/{r['max_attempts']}\t{error}"
        )
    click.echo(f"{len(dead)} dead letter(s) on queue {ALERT_DLQ!r}")


def show_cmd(rt: Runtime, delivery: str) -> None:
    (did,) = _found(rt, [delivery])
    from trace_core.alerts.dead import attempts_of

    with rt.data() as conn:
        (row,) = list_dead(conn, ids=[did], limit=1)
        history = attempts_of(conn, did)
    out = _as_json(row) | {"attempt_history": history}
    click.echo(json.dumps(out, indent=2, default=str))


def replay_cmd(rt: Runtime, ids: Sequence[str], all_: bool) -> None:
    more = rt.settings.alert_delivery_max_attempts
    with rt.data() as conn:
        n = replay_dead(conn, more_attempts=more, ids=None if all_ else _found(rt, ids))
    click.echo(f"replayed {n} dead letter(s) to queue {ALERT_DLQ!r}")


def purge_cmd(rt: Runtime, ids: Sequence[str], all_: bool) -> None:
    with rt.data() as conn:
        n = dismiss_dead(conn, ids=None if all_ else _found(rt, ids))
    click.echo(f"purged {n} dead letter(s) from queue {ALERT_DLQ!r} (dismissed; history kept)")


def count(rt: Runtime) -> int:
    with rt.data() as conn:
        return len(list_dead(conn, limit=10_000))
