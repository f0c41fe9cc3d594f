-- name: insert_outbox
INSERT INTO state.outbox (outbox_id, topic, payload, available_at)
VALUES (%(outbox_id)s, %(topic)s, %(payload)s, COALESCE(%(available_at)s, now()))
ON CONFLICT (outbox_id) DO NOTHING

