-- depends: 0004_sinks
-- Alert delivery: one row per (alert event, channel), planned by the delivery step for new
-- events, and one row per send attempt. delivery_id = uuid5(dedupe_key, channel_key) is also
-- the Idempotency-Key header, so a receiver can drop a resend after a crash mid-send.
--
-- pending -> sending (leased while the request is in flight) -> delivered | pending (retry at
-- next_attempt_at) | failed (terminal: permanent error, or attempts exhausted).
-- A delivered row is never sent again.
CREATE TABLE data.alert_deliveries (
    delivery_id      uuid PRIMARY KEY,
    dedupe_key       text        NOT NULL REFERENCES data.alert_events (dedupe_key),
    alert_name       text        NOT NULL,
    channel_key      text        NOT NULL,  -- 'log' or 'webhook:<sha256(url)[:16]>'
    channel_kind     text        NOT NULL CHECK (channel_kind IN ('webhook', 'log')),
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sending', 'delivered', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     integer     NOT NULL CHECK (max_attempts > 0),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    leased_until     timestamptz,
    last_attempt_at  timestamptz,
    last_status_code integer,
    last_error       text,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (dedupe_key, channel_key),
    CHECK (status <> 'sending' OR leased_until IS NOT NULL),
    CHECK (status <> 'delivered' OR delivered_at IS NOT NULL)
);
CREATE INDEX alert_deliveries_due_idx ON data.alert_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX alert_deliveries_sending_idx ON data.alert_deliveries (leased_until)
    WHERE status = 'sending';

-- Every send attempt: outcome, HTTP status, and a short error (never the URL, headers or bodies).
CREATE TABLE data.alert_delivery_attempts (
    delivery_id  uuid        NOT NULL REFERENCES data.alert_deliveries (delivery_id),
    attempt      integer     NOT NULL CHECK (attempt >= 1),
    channel_key  text        NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    outcome      text        NOT NULL CHECK (outcome IN ('delivered', 'retry', 'failed')),
    status_code  integer,
    error        text,
    duration_ms  integer     NOT NULL CHECK (duration_ms >= 0),
    PRIMARY KEY (delivery_id, attempt)
);
-- The per-channel rate limit counts recent attempts.
CREATE INDEX alert_delivery_attempts_channel_idx
    ON data.alert_delivery_attempts (channel_key, started_at);
