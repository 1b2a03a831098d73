-- The timeline's key leads with the message id: message ids are time-ordered (UUIDv7), so new
-- entries append at one end of the key's b-tree instead of dirtying a page per inbox in every
-- commit. SQLite cannot change a primary key in place: the table is rebuilt.
CREATE TABLE inbox_timeline_v3 (
    app TEXT NOT NULL,
    inbox TEXT NOT NULL,
    message_id TEXT NOT NULL,
    conversation TEXT NOT NULL,
    status INTEGER NOT NULL,
    sent_at INTEGER NOT NULL,
    body TEXT,
    PRIMARY KEY (app, message_id, inbox)
);
INSERT INTO inbox_timeline_v3 (app, inbox, message_id, conversation, status, sent_at, body)
    SELECT app, inbox, message_id, conversation, status, sent_at, body FROM inbox_timeline;
DROP TABLE inbox_timeline;
ALTER TABLE inbox_timeline_v3 RENAME TO inbox_timeline;
CREATE INDEX inbox_timeline_by_conversation ON inbox_timeline (app, inbox, conversation, sent_at);
