"""Transform jobs (``kind: transform``): spec, state, on-input routing, the ``udf_transform``
operator. Sources (cron, webhook, manual) live in ``trace_core.sources``."""
