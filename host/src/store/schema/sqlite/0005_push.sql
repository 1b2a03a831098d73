-- Push: the app instances (devices) clients register, and the push requests the server side
-- makes; kept for a push provider (inboxd sends no push itself).
CREATE TABLE push_instances (
    app TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    body TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (app, instance_id)
);
CREATE INDEX push_instances_by_user ON push_instances (app, user_id);
CREATE TABLE push_requests (
    app TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (app, id)
);
