"""Folding roll-ups: find the newest still-valid earlier roll-up from the registry alone.

A roll-up over ``[0, end)`` of a per-range output is identified by a *chain* fingerprint:
``c_0 = seed`` (the roll-up's parameters), ``c_k = fp(c_{k-1}, version and span of the k-th
visible part)``. The roll-up for an earlier part end is found by recomputing its id (the last
``CHECKPOINTS`` ends are tried), and is valid exactly when no input part before it changed: a
repaired range changes every later ``c_k``, and the fold restarts from the newest roll-up
before it, or from scratch. ``native_supply``, ``top_accounts`` and the staking roll-up fold so.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from trace_core.analytics import output
from trace_core.analytics.output import OutputTarget, fingerprint
from trace_core.datasets.duckdb_sql import parquet_select
from trace_core.datasets.manifest import load_manifest
from trace_core.datasets.registry import VersionRecord, get_version, visible_parts
from trace_core.db.queries import q

CHECKPOINTS = 64  # earlier roll-ups looked for (newest first) before recomputing from scratch


@dataclass(frozen=True)
class Link:
    """The roll-up state after the input parts ending at ``end``."""

    end: int
    fp: str
    fake: bool


def chain(parts: Sequence[tuple[uuid.UUID, int, int, bool]], seed: str) -> list[Link]:
    """``[Link]`` for the empty prefix (end 0) and each part end."""
    out = [Link(0, seed, False)]
    for version, start, end, fake in parts:
        prev = out[-1]
        out.append(Link(end, fingerprint(prev.fp, version, start, end), prev.fake or fake))
    return out


def input_links(records: list[VersionRecord], end: int, seed: str) -> list[Link]:
    """The chain over the visible parts of a per-range output's ``records`` below ``end``."""
    parts = [
        (p.record.dataset_version, p.start, p.end, p.record.fake)
        for p in visible_parts(records)
        if p.start < end
    ]
    return chain(parts, seed)


def previous(
    state: Any, links: list[Link], target_of: Callable[[Link], OutputTarget]
) -> tuple[Link, VersionRecord] | None:
    """The newest earlier link (not the last) whose roll-up ``target_of(link)`` is registered
    and not collected, among the last ``CHECKPOINTS``; None: recompute from scratch."""
    tried = {
        target_of(links[k]).dataset_version: k
        for k in range(max(1, len(links) - 1 - CHECKPOINTS), len(links) - 1)
    }
    if not tried:
        return None
    found = state.execute(q("datasets", "live_version_ids"), {"versions": list(tried)})
    ks = [tried[row[0]] for row in found.fetchall()]
    if not ks:
        return None
    link = links[max(ks)]
    rec = get_version(state, target_of(link).dataset_version)
    return (link, rec) if rec is not None else None


def files(ctx: Any, rec: VersionRecord) -> str:
    """DuckDB ``SELECT *`` over a committed version's Parquet files."""
    manifest = load_manifest(ctx.store, rec.manifest_key, prefix=rec.storage_prefix)
    return parquet_select([ctx.store.duckdb_uri(k) for k in manifest.parquet_keys])


def stable_points(ends: Sequence[int], limit: int) -> list[int]:
    """At most ``limit`` of the sorted ``ends``: every ``stride``-th (the smallest power of two
    that fits) plus the last. Appending ends never brings back an earlier end that was left
    out, so the points of a folded roll-up before its fold are a subset of the previous one's
    (its rows there are reused)."""
    if len(ends) <= limit:
        return list(ends)
    stride = 1
    while (len(ends) - 1) // stride + 2 > limit:
        stride *= 2
    picked = {ends[i] for i in range(0, len(ends), stride)}
    picked.add(ends[-1])
    return sorted(picked)


def targets(ctx: Any, job: Any, link: Link, names: Sequence[str]) -> dict[str, OutputTarget]:
    """The outputs ``names`` of a multi-output roll-up over ``[0, link.end)``."""
    return {
        name: OutputTarget(
            ctx.org_id, job.job, job.chain_id, name, 0, link.end, link.fp, fake=link.fake
        )
        for name in names
    }


def previous_rollup(
    ctx: Any, job: Any, links: list[Link], names: Sequence[str], carry: str
) -> tuple[Link, dict[str, VersionRecord]] | None:
    """The newest earlier roll-up to fold from (``previous`` over its ``carry`` output) when
    every one of its outputs ``names`` is still registered; None: recompute from scratch."""
    found = previous(ctx.state, links, lambda link: targets(ctx, job, link, names)[carry])
    if found is None:
        return None
    got = {
        n: output.registered(ctx.state, t) for n, t in targets(ctx, job, found[0], names).items()
    }
    if not all(got.values()):
        return None
    return found[0], {n: v.record for n, v in got.items() if v is not None}
