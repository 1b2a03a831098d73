-- Intents live about a second (the settle journal deletes them in bulk), so the table holds the
-- messages in flight: keyed by its primary key alone (no rowid tree beside it), whose time-ordered
-- ids (UUIDv7) put new rows at one end and the settled ones at the other, and without indexes
-- (a lookup by fingerprint, only for a redelivery its process does not know, and the weekly expiry
-- scan the few rows). A commit of many intents writes a page or two, not one page per intent.
CREATE TABLE inboxd_intents_lean (
    app TEXT NOT NULL,
    message_id TEXT NOT NULL,
    fingerprint BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (app, message_id)
) WITHOUT ROWID;
INSERT INTO inboxd_intents_lean (app, message_id, fingerprint, created_at)
    SELECT app, message_id, fingerprint, created_at FROM inboxd_intents;
DROP TABLE inboxd_intents;
ALTER TABLE inboxd_intents_lean RENAME TO inboxd_intents;
