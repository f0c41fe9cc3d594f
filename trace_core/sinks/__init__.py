"""Buffered sinks: operators stage JSONL batches and publish pointers; the sink writes them."""
