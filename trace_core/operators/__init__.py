"""Operators: the units of work a task runs (cryo_ingest, ...). Each module owns one operator."""
