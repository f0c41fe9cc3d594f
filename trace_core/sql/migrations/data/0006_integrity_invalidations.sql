-- Integrity (issue 14): invalidations are consumed once; alert events over invalidated blocks
-- are marked stale (with the reason) until a re-evaluation over the replacement data finds
-- them again.

ALTER TABLE data.data_invalidations
    ADD COLUMN consumed_at timestamptz,
    ADD COLUMN consumed    jsonb;  -- what consuming it did (repairs planned, events staled)

CREATE INDEX data_invalidations_pending_idx
    ON data.data_invalidations (invalidation_id) WHERE consumed_at IS NULL;

-- One correction row per repair task: `verify --repair` run twice records it once.
CREATE UNIQUE INDEX data_invalidations_correction_task_idx
    ON data.data_invalidations ((details->>'task_id')) WHERE reason = 'correction';

ALTER TABLE data.alert_events
    ADD COLUMN stale_at       timestamptz,
    ADD COLUMN stale_reason   text,
    ADD COLUMN revalidated_at timestamptz;  -- last time an evaluation produced it again

CREATE INDEX alert_events_chain_block_idx ON data.alert_events (chain_id, block_number);
