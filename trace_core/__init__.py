"""Trace core: framework-free domain logic and adapters (never imports dagster)."""
