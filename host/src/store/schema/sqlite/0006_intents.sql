-- One message, one id across processes: the id each chat message in flight was given, by the
-- fingerprint of what was consumed (routing key and body), committed before its copies are
-- published and deleted once its delivery is settled; a redelivery that finds no intent in the
-- memory of its process takes the oldest one of its fingerprint.
CREATE TABLE inboxd_intents (
    app TEXT NOT NULL,
    message_id TEXT NOT NULL,
    fingerprint BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (app, message_id)
);
CREATE INDEX inboxd_intents_by_fingerprint ON inboxd_intents (app, fingerprint, created_at);
CREATE INDEX inboxd_intents_by_age ON inboxd_intents (created_at);

-- Webhook events of a message carry its id; a delivered one stays (dead = 2, body emptied) while
-- the message's intent is open, so a redelivery's event (same outbox id) is not sent again.
ALTER TABLE webhook_outbox ADD COLUMN message_id TEXT;
CREATE INDEX webhook_outbox_by_message ON webhook_outbox (app, message_id);
