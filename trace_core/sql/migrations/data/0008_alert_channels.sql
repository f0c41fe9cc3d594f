-- Alert channels (issue 27): Slack, PagerDuty, email and SMS deliveries beside webhook and
-- log, and dead letters. A 'failed' delivery is a dead letter until an operator replays it
-- (back to 'pending' with more attempts) or dismisses it (`trace-lite dlq purge --queue
-- alert_deliveries`: dismissed_at set, the row and its attempt history kept).
ALTER TABLE data.alert_deliveries DROP CONSTRAINT alert_deliveries_channel_kind_check;
ALTER TABLE data.alert_deliveries ADD CONSTRAINT alert_deliveries_channel_kind_check
    CHECK (channel_kind IN ('webhook', 'log', 'slack', 'pagerduty', 'email', 'sms'));
ALTER TABLE data.alert_deliveries ADD COLUMN dismissed_at timestamptz;
ALTER TABLE data.alert_deliveries ADD CONSTRAINT alert_deliveries_dismissed_failed
    CHECK (dismissed_at IS NULL OR status = 'failed');
CREATE INDEX alert_deliveries_dead_idx ON data.alert_deliveries (updated_at)
    WHERE status = 'failed' AND dismissed_at IS NULL;
