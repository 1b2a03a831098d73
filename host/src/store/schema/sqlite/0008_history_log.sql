-- The history log: a commit appends its timeline and conversation writes here (one row, at the
-- end of the key), and they are applied to inbox_timeline and inbox_conversations in batches,
-- in the same transaction that deletes them from the log (see the store's history_log module).
CREATE TABLE inboxd_history_log (
    seq INTEGER PRIMARY KEY,
    app TEXT NOT NULL,
    writes TEXT NOT NULL
);
