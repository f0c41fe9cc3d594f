"""Sources: cron ticks, signed webhooks and manual launches become job runs, exactly once per
idempotency key (``trigger``: source event + task + outbox row in one transaction)."""
