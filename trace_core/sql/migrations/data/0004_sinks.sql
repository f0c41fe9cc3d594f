-- Buffered sink destinations. Rows arrive only through the sink consumer
-- (trace_core.sinks.consumer), which writes a whole batch in one transaction with
-- INSERT ... ON CONFLICT (dedupe_key) DO NOTHING: the first write of a key wins, and a retried
-- or duplicated batch changes nothing. source_* name the task attempt that published the
-- first write, taken from the trusted pointer message, never from the rows.

CREATE TABLE data.alert_events (
    dedupe_key     text        PRIMARY KEY CHECK (char_length(dedupe_key) BETWEEN 1 AND 512),
    alert_name     text        NOT NULL CHECK (char_length(alert_name) BETWEEN 1 AND 200),
    severity       text        NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    chain_id       bigint      NOT NULL CHECK (chain_id > 0),
    block_number   bigint      NOT NULL CHECK (block_number >= 0),
    block_hash     text,
    tx_hash        text,
    event_time     timestamptz NOT NULL,
    payload        jsonb       NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    created_at     timestamptz NOT NULL DEFAULT now(),
    source_task_id uuid        NOT NULL,
    source_attempt integer     NOT NULL CHECK (source_attempt >= 1)
);
CREATE INDEX alert_events_created_idx ON data.alert_events (created_at, dedupe_key);
CREATE INDEX alert_events_name_idx ON data.alert_events (alert_name, event_time DESC);
