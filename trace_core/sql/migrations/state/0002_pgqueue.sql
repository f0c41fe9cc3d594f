-- pgqueue: SQS-like queues in the state database. Messages are wake-ups, never truth.
--
-- available_at    when the message may be received next (publish delay, nack delay, or the end
--                 of the current visibility timeout); receive picks rows with available_at <= now()
-- invisible_until end of the current receive's visibility; NULL when not in flight
-- receipt         the current receipt (new random uuid per receive; NULL before the first
--                 receive and after a nack); ack/extend/nack must present it
CREATE TABLE state.queue_messages (
    message_id        bigserial   PRIMARY KEY,
    queue_name        text        NOT NULL,
    payload           jsonb       NOT NULL,
    available_at      timestamptz NOT NULL DEFAULT now(),
    invisible_until   timestamptz,
    receipt           uuid,
    receive_count     integer     NOT NULL DEFAULT 0 CHECK (receive_count >= 0),
    first_received_at timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    last_error        text
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.05);
CREATE INDEX queue_messages_due_idx ON state.queue_messages (queue_name, available_at);

-- Dead letters: moved here (same message_id) when a message reached max_receive_count.
CREATE TABLE state.queue_dead (
    message_id    bigint      PRIMARY KEY,
    queue_name    text        NOT NULL,
    payload       jsonb       NOT NULL,
    receive_count integer     NOT NULL,
    reason        text        NOT NULL,
    last_error    text,
    created_at    timestamptz NOT NULL,
    dead_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX queue_dead_queue_idx ON state.queue_dead (queue_name, dead_at);
