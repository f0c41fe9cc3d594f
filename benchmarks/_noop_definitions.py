"""The Dagster definitions ``bench_dagster.py``'s launched runs load: production's plus the
``noop`` operator (``_noop_operator.py``)."""

from __future__ import annotations

from _noop_operator import register

from trace_dagster.definitions import build_definitions

register()
defs = build_definitions()
