-- The webhook outbox: one row per event and endpoint until delivered (then deleted) or dead.
CREATE TABLE webhook_outbox (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    event_type TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    dead INTEGER NOT NULL,
    last_error TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (app, dead, next_attempt_at);
