"""Deleting hot rows that cold versions serve: ``delete_compacted`` after compaction (ranges
recorded in ``state.partition_versions``) and ``prune_served`` for chains whose cold versions
come from chain_sync. A row goes only where the org's current cold selection serves its block
and it is final and below the follower's cursor, so a federated read never changes; every
statement names the org (the connections bypass row-level security).
"""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import Connection, sql

from trace_core.datasets.registry import missing_ranges
from trace_core.db.connection import Databases, connect
from trace_core.db.queries import q
from trace_core.hot.federation import cold_selection
from trace_core.hot.finality import final_end, finality_depth
from trace_core.hot.follower import acting_org, load_cursor, org_session
from trace_core.hot.tables import HOT_DATASETS, HOT_SCHEMA, RANGE_FILTER, check_dataset, hot_table
from trace_core.settings import Settings


def delete_compacted(
    settings: Settings,
    dbs: Databases,
    chain_id: int,
    *,
    datasets: tuple[str, ...] = HOT_DATASETS,
    org_id: str | None = None,
) -> dict[str, int]:
    """Delete the org's hot rows of its compacted ranges that its cold selection now serves
    (``org_id`` default ``settings.org_id``).

    A range's rows go only when its range is fully covered by the registry's current cold
    selection and lies below ``hot_boundary``; it is then marked ``hot_deleted_at``. A crash
    between the delete and the mark re-deletes nothing next time. Returns rows deleted per
    dataset.
    """
    for ds in datasets:
        check_dataset(ds)
    org = acting_org(settings, org_id)
    with (
        connect(dbs.state_url, autocommit=True, **org_session(settings, org)) as state,
        connect(dbs.data_url, autocommit=True, **org_session(settings, org)) as data,
    ):
        return delete_compacted_on(state, data, org, chain_id, datasets)


def delete_compacted_on(
    state: Connection[Any],
    data: Connection[Any],
    org_id: str,
    chain_id: int,
    datasets: tuple[str, ...],
) -> dict[str, int]:
    deleted: dict[str, int] = {}
    cursor = load_cursor(state, org_id, chain_id)
    for ds in datasets:
        selection = cold_selection(state, chain_id, ds, org_id=org_id)
        boundary = max((v.range_end for v in selection), default=0)
        key = {"org_id": uuid.UUID(org_id), "chain_id": chain_id, "dataset_key": ds}
        pending = state.execute(q("hot", "pending_hot_deletes"), key).fetchall()
        total = 0
        for _version, a, b in pending:
            if b > boundary or missing_ranges(selection, a, b):
                continue
            if cursor is not None and b > cursor.number:
                continue  # the follower's tip always stays hot
            total += _delete_range(data, org_id, chain_id, ds, a, b)
            state.execute(q("hot", "mark_hot_deleted"), {**key, "range_start": a, "range_end": b})
        deleted[ds] = total
    return deleted


def prune_served(
    settings: Settings,
    dbs: Databases,
    chain_id: int,
    *,
    datasets: tuple[str, ...] = HOT_DATASETS,
    finality_depth_override: int | None = None,
    org_id: str | None = None,
) -> dict[str, int]:
    """Delete the org's hot rows that its cold versions serve, for chains it does not compact
    (follow_head: chain_sync's own ranges become cold behind the tip); ``org_id`` default
    ``settings.org_id``.

    A hot row goes when its block is below the dataset's ``hot_boundary``, inside a range the
    cold selection covers (rows in ``hot_gaps`` stay: readers take them from hot), final
    (below ``cursor - finality_depth``) and below the follower's cursor. Queries are unchanged
    by construction: readers never take hot rows from where a cold version serves the block.
    One DELETE per dataset; returns rows deleted per dataset.
    """
    for ds in datasets:
        check_dataset(ds)
    deleted: dict[str, int] = {}
    org = acting_org(settings, org_id)
    with (
        connect(dbs.state_url, autocommit=True, **org_session(settings, org)) as state,
        connect(dbs.data_url, autocommit=True, **org_session(settings, org)) as data,
    ):
        cursor = load_cursor(state, org, chain_id)
        if cursor is None:
            return {ds: 0 for ds in datasets}
        depth = finality_depth(
            settings, chain_id, state_conn=state, override=finality_depth_override, org_id=org
        )
        limit = min(final_end(cursor.number, depth), cursor.number)
        for ds in datasets:
            selection = cold_selection(state, chain_id, ds, org_id=org)
            boundary = min(max((v.range_end for v in selection), default=0), limit)
            keep = missing_ranges(selection, 0, boundary)
            if boundary <= 0:
                deleted[ds] = 0
                continue
            condition = sql.SQL(" AND ").join(
                [sql.SQL("org_id = %s"), sql.SQL("chain_id = %s"), sql.SQL("block_number < %s")]
                + [sql.SQL("NOT (block_number >= %s AND block_number < %s)") for _ in keep]
            )
            params: list[Any] = [uuid.UUID(org), chain_id, boundary]
            params += [x for a, b in keep for x in (a, b)]
            with data.transaction():
                cur = data.execute(
                    sql.SQL("DELETE FROM {}.{} WHERE ").format(
                        sql.Identifier(HOT_SCHEMA), sql.Identifier(hot_table(ds))
                    )
                    + condition,
                    params,
                )
            deleted[ds] = cur.rowcount
    return deleted


def _delete_range(
    data: Connection[Any], org_id: str, chain_id: int, dataset_key: str, a: int, b: int
) -> int:
    with data.transaction():
        cur = data.execute(
            sql.SQL("DELETE FROM {}.{} WHERE " + RANGE_FILTER).format(
                sql.Identifier(HOT_SCHEMA), sql.Identifier(hot_table(dataset_key))
            ),
            {"org_id": uuid.UUID(org_id), "chain_id": chain_id, "range_start": a, "range_end": b},
        )
    return cur.rowcount
