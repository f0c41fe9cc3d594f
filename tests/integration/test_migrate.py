from __future__ import annotations

import threading

from trace_core.db.connection import Databases, connect
from trace_core.db.migrate import migrate


def _schema(url: str) -> list[tuple[str, str, str, str]]:
    with connect(url) as conn:
        rows = conn.execute(
            """SELECT table_schema, table_name, column_name, data_type
               FROM information_schema.columns
               WHERE table_schema IN ('state', 'data')
               ORDER BY 1, 2, 3"""
        ).fetchall()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_migrate_twice_is_a_noop(dbs: Databases) -> None:
    before = (_schema(dbs.state_url), _schema(dbs.data_url))
    assert migrate(dbs) == {"state": [], "data": []}
    assert (_schema(dbs.state_url), _schema(dbs.data_url)) == before
    assert any(t == "tasks" for _, t, _, _ in before[0])


def test_concurrent_migrate_from_zero(pg_server_url: str) -> None:
    from tests.conftest import _recreate, drop_databases
    from trace_core.db.connection import with_database

    _recreate(pg_server_url, "t_conc_state")
    _recreate(pg_server_url, "t_conc_data")
    fresh = Databases(
        with_database(pg_server_url, "t_conc_state"), with_database(pg_server_url, "t_conc_data")
    )
    errors: list[BaseException] = []
    results: list[dict[str, list[str]]] = []

    def run() -> None:
        try:
            results.append(migrate(fresh))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        applied = [m for r in results for m in r["state"]]
        # every migration applied exactly once across the racing runs
        assert len(applied) == len(set(applied)) and applied
    finally:
        drop_databases(pg_server_url, fresh)
