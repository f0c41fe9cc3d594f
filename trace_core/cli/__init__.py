"""The ``trace-lite`` command line (Dagster-free commands; trace_dagster adds run/up/down/demo)."""
