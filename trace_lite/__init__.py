"""Trace Lite: the local stack (the ``trace-lite`` entry point, demo, up/down) on top of
trace_core and trace_dagster."""
