-- Databases for the compose profile: Trace state and data live in one server, Dagster's own
-- storage in another database. trace-lite creates trace_state/trace_data on first migrate.
CREATE DATABASE dagster;
