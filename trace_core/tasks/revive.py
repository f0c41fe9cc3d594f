"""Reviving dead tasks: a fresh attempt budget, through the outbox.

A task ends ``dead`` when it runs out of attempts or fails fatally; a chain_sync range whose task
is dead stops its stream. Reviving it (``trace-lite retry``, re-executing a failed Dagster run,
launching the stream asset's partition) puts it back to ``queued``, due now, with a fresh budget:
attempt numbers keep counting up (fencing and history need unique numbers) and ``attempt_base``
records the attempts spent so far. Its range goes back to ``scheduled``. The wake-up is an outbox
row written in the same transaction, so the outbox publisher stays the only publisher.

Every function here runs in the caller's transaction and decides nothing from the caller's
clock: lease and wake-up times are the database's ``now()``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

from trace_core.db.queries import q
from trace_core.errors import UnknownTask
from trace_core.outbox import enqueue_wakeup

log = logging.getLogger(__name__)

# Who asked for a revive (state.task_revivals.source).
SOURCE_CLI = "cli"
SOURCE_RERUN = "dagster_reexecution"
SOURCE_PARTITION = "dagster_partition"


@dataclass(frozen=True)
class ReviveOutcome:
    """One task a revive looked at. ``revived`` is False when it was not dead (unchanged)."""

    task_id: uuid.UUID
    operator: str
    status: str  # before the revive: 'dead' when revived
    revived: bool
    attempts: int  # attempts spent so far (the next claim is attempts + 1)
    max_attempts: int
    last_error: str | None
    last_error_kind: str | None
    paused: bool = False  # revived, but its job is paused: it runs after `resume`
    payload: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        """``job/stream [start, end)`` for a chain_sync range, else the operator name."""
        p = self.payload
        if {"job_name", "dataset_key", "range_start", "range_end"} <= p.keys():
            return f"{p['job_name']}/{p['dataset_key']} [{p['range_start']}, {p['range_end']})"
        return self.operator

    def as_json(self) -> dict[str, Any]:
        return {
            "task_id": str(self.task_id),
            "operator": self.operator,
            "label": self.label,
            "status": self.status,
            "revived": self.revived,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "last_error_kind": self.last_error_kind,
            "last_error": self.last_error,
            "paused": self.paused,
        }


def parse_task_id(raw: str | uuid.UUID) -> uuid.UUID:
    """A task id from text. Raises ``UnknownTask`` naming the text if it is not a UUID."""
    if isinstance(raw, uuid.UUID):
        return raw
    try:
        return uuid.UUID(str(raw).strip())
    except ValueError:
        raise UnknownTask(f"{raw!r} (not a task id)") from None


def revive_tasks(
    conn: Connection[Any],
    task_ids: Sequence[uuid.UUID],
    *,
    source: str,
    detail: str | None = None,
    wake_delay_seconds: float = 0.0,
    missing_ok: bool = False,
) -> list[ReviveOutcome]:
    """Revive every dead task among ``task_ids`` (in order, duplicates once) in the caller's
    transaction; the others are reported unchanged.

    Each revived task gets a fresh attempt budget, a ``task_revivals`` row, its chain_sync range
    back to ``scheduled``, and (unless its job is paused) an outbox wake-up available after
    ``wake_delay_seconds`` (a run that executes the task itself passes its lease length, so the
    wake-up is only a backstop). Raises ``UnknownTask`` naming every unknown id before changing
    anything, unless ``missing_ok`` (then unknown ids are left out of the result).
    """
    from trace_core.chain_sync import planner

    ids = list(dict.fromkeys(task_ids))
    with conn.cursor(row_factory=dict_row) as cur:
        rows = {
            r["task_id"]: r
            for r in cur.execute(q("tasks", "lock_for_revive"), {"task_ids": ids}).fetchall()
        }
    missing = [t for t in ids if t not in rows]
    if missing and not missing_ok:
        raise UnknownTask(", ".join(str(t) for t in missing))
    out: list[ReviveOutcome] = []
    for task_id in (t for t in ids if t in rows):
        row = rows[task_id]
        base = {
            "task_id": task_id,
            "operator": row["operator"],
            "status": row["status"],
            "attempts": row["attempt"],
            "max_attempts": row["max_attempts"],
            "last_error": row["last_error"],
            "last_error_kind": row["last_error_kind"],
            "payload": row["payload"],
        }
        if row["status"] != "dead":
            out.append(ReviveOutcome(revived=False, paused=row["paused"], **base))
            continue
        revived = conn.execute(
            q("tasks", "revive_task"),
            {"task_id": task_id, "wake_delay_seconds": float(wake_delay_seconds)},
        ).fetchone()
        assert revived is not None  # the row is locked and dead
        generation, paused, revive_no, wake_at = revived
        conn.execute(
            q("tasks", "insert_revival"),
            {
                "task_id": task_id,
                "revive": revive_no,
                "attempt": row["attempt"],
                "last_error": row["last_error"],
                "source": source,
                "detail": detail,
            },
        )
        if planner.range_for_task(conn, task_id) is not None:
            planner.revive_range(conn, task_id)
        if not paused:
            enqueue_wakeup(conn, task_id=task_id, generation=generation, available_at=wake_at)
        log.info(
            "task revived",
            extra={"task_id": str(task_id), "attempt": row["attempt"], "source": source},
        )
        out.append(ReviveOutcome(revived=True, paused=paused, **base))
    return out


@dataclass(frozen=True)
class RerunPreparation:
    """What ``prepare_rerun`` changed before a run executes its tasks itself."""

    revived: list[ReviveOutcome]
    expedited: list[uuid.UUID]


def prepare_rerun(
    conn: Connection[Any],
    task_ids: Iterable[uuid.UUID],
    *,
    source: str,
    detail: str | None,
    wake_delay_seconds: float,
) -> RerunPreparation:
    """Make ``task_ids`` claimable by a run that is about to execute them: revive the dead ones
    and make queued ones waiting out a retry backoff due now. Unknown ids are ignored (the run
    reports them as skipped); succeeded and running tasks are left alone."""
    ids = list(task_ids)
    outcomes = revive_tasks(
        conn,
        ids,
        source=source,
        detail=detail,
        wake_delay_seconds=wake_delay_seconds,
        missing_ok=True,
    )
    expedited = [r[0] for r in conn.execute(q("tasks", "expedite_queued"), {"task_ids": ids})]
    return RerunPreparation([o for o in outcomes if o.revived], expedited)
