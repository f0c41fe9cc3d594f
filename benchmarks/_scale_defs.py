"""What bench_scale.py's GraphQL code server loads: Trace's definitions from the environment
(the benchmark's scratch databases)."""

from trace_dagster.definitions import build_definitions

defs = build_definitions()
