"""The engine: the loops that run everything, and the shell's one doorway.

``dispatcher`` (one tick: heads, planning, reaping, the outbox), ``intake`` (wake-ups into
worker runs, stranded runs), ``execute`` (claim, run, fenced completion), ``worker_run`` (one
run's batch and the waves it frees), ``idle`` (what work is still owed), ``registry`` (the
operators production schedules), ``revive`` (reviving on request), ``services`` and
``service_steps`` (leased long-lived loops); for the shell, ``streams`` (streams, epochs and
their progress), ``transforms`` (transform runs and triggers), ``integrity`` (integrity passes,
retention), ``analytics`` (analytics runs due) and ``apply`` (chain_sync job files), each
function opening its own connection. trace_dagster imports these and opens no connection
itself; its direct domain imports still listed in tests/unit/test_import_graph.py
(``SHELL_EXCEPTIONS``) are to move here.
"""
