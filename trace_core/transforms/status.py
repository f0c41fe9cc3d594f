"""What ``trace-lite status`` shows of transform jobs: each with its runs by state."""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

from trace_core.db.queries import q
from trace_core.transforms.store import list_transforms
from trace_core.transforms.tasks import OPERATOR


def transform_status(conn: Connection[Any], org_id: str | uuid.UUID) -> list[dict[str, Any]]:
    """Each transform of the org with its runs by state (for ``trace-lite status``)."""
    params = {"org_id": uuid.UUID(str(org_id)), "operator": OPERATOR}
    with conn.cursor(row_factory=dict_row) as cur:
        counts = {r["name"]: r for r in cur.execute(q("transforms", "run_counts"), params)}
    out = []
    for t in list_transforms(conn, org_id):
        runs = counts.get(t.name, {})
        last = runs.get("last_finished_at")
        out.append(
            {
                **t.as_json(),
                "runs": {
                    k: int(runs.get(k) or 0) for k in ("queued", "running", "succeeded", "dead")
                },
                "last_finished_at": last.isoformat() if last else None,
                "last_error": runs.get("last_error"),
            }
        )
    return out
