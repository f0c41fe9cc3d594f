"""Garbage collection of abandoned staging: local attempt dirs and store staging prefixes.

Staging of a crashed or stale attempt is never promoted; it only costs space. An attempt's
staging is removed when everything in it is older than the threshold, unless (given a state
connection) that attempt is still the running one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg import Connection

from trace_core.db.queries import q
from trace_core.settings import Settings
from trace_core.storage.base import ObjectStore
from trace_core.storage.local import LocalStore

log = logging.getLogger(__name__)

STAGING_ROOT = "staging/"


@dataclass
class GcReport:
    """What ``gc_staging`` removed: local attempt dirs, store prefixes, objects, temp files."""

    local_dirs: list[str] = field(default_factory=list)
    store_prefixes: list[str] = field(default_factory=list)
    objects_deleted: int = 0
    tmp_files: list[str] = field(default_factory=list)
    kept_running: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.local_dirs) + len(self.store_prefixes) + len(self.tmp_files)


def _newest_mtime(path: Path) -> float:
    newest = path.stat().st_mtime
    for dirpath, _dirs, files in os.walk(path):
        for name in [*files, *_dirs]:
            try:
                newest = max(newest, os.stat(os.path.join(dirpath, name)).st_mtime)
            except FileNotFoundError:
                continue
    return newest


def _running(conn: Connection[Any] | None, attempts: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """The (task_id, attempt) pairs among ``attempts`` that are currently running."""
    if conn is None or not attempts:
        return set()
    task_ids = []
    for task_id, _attempt in attempts:
        try:
            task_ids.append(uuid.UUID(task_id))
        except ValueError:
            continue
    rows = conn.execute(q("datasets", "running_attempts"), {"task_ids": task_ids}).fetchall()
    return {(str(t), a) for t, a in rows}


def _attempt_of(parts: list[str]) -> tuple[str, int] | None:
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def gc_staging(
    settings: Settings,
    store: ObjectStore,
    older_than_seconds: float,
    *,
    conn: Connection[Any] | None = None,
    now: float | None = None,
) -> GcReport:
    """Remove staging older than ``older_than_seconds`` and report what was removed.

    Local: ``{staging_dir}/{task_id}/{attempt}/`` dirs. Store: ``staging/{task_id}/{attempt}/``
    prefixes, judged by their newest object. A LocalStore's crashed temp files too. With
    ``conn``, the running attempt of a task is kept whatever its age.
    """
    now = time.time() if now is None else now
    cutoff = now - older_than_seconds
    report = GcReport()

    local_candidates: dict[tuple[str, int], Path] = {}
    root = settings.resolved_staging_dir()
    if root.is_dir():
        for task_dir in sorted(root.iterdir()):
            if not task_dir.is_dir():
                continue
            for attempt_dir in sorted(task_dir.iterdir()):
                attempt = _attempt_of([task_dir.name, attempt_dir.name])
                if attempt and attempt_dir.is_dir() and _newest_mtime(attempt_dir) < cutoff:
                    local_candidates[attempt] = attempt_dir

    prefixes: dict[tuple[str, int], float] = {}
    for info in store.list(STAGING_ROOT):
        attempt = _attempt_of(info.key[len(STAGING_ROOT) :].split("/"))
        if attempt is None:
            continue
        stamp = info.last_modified.timestamp()
        prefixes[attempt] = max(prefixes.get(attempt, stamp), stamp)
    store_candidates = {a for a, newest in prefixes.items() if newest < cutoff}

    running = _running(conn, set(local_candidates) | store_candidates)
    report.kept_running = sorted(f"{t}/{a}" for t, a in running)

    for attempt, path in sorted(local_candidates.items()):
        if attempt in running:
            continue
        shutil.rmtree(path, ignore_errors=True)
        report.local_dirs.append(str(path))
        with contextlib.suppress(OSError):
            path.parent.rmdir()
    for task_id, number in sorted(store_candidates - running):
        prefix = f"{STAGING_ROOT}{task_id}/{number}/"
        report.objects_deleted += store.delete_prefix(prefix)
        report.store_prefixes.append(prefix)
    if isinstance(store, LocalStore):
        report.tmp_files = store.remove_stale_tmp(older_than_seconds, now)
    if report.total:
        log.info(
            "staging collected",
            extra={
                "local_dirs": len(report.local_dirs),
                "store_prefixes": len(report.store_prefixes),
                "objects": report.objects_deleted,
            },
        )
    return report
