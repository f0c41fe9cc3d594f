"""chain_sync: YAML jobs that sync block ranges of cryo datasets into versioned Parquet.

``yamlload``/``spec`` parse and validate job files, ``store`` applies them to Postgres state,
``planner`` turns cursors into scheduled ranges (task + outbox row in one transaction),
``head`` observes chain heads for follow_head jobs and ``status`` reports progress.
"""
