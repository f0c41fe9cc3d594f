"""The Dagster shell around trace_core: resources, sensors, jobs and Definitions."""
