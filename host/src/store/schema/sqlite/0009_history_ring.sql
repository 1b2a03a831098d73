-- The history log as a ring of slots, each logged commit written in place into the slot of its
-- number, and the number through which it was applied (see the store's history_ring module). A
-- log left in inboxd_history_log by an earlier version is applied when the writer opens.
CREATE TABLE inboxd_history_ring (
    slot INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    app TEXT NOT NULL,
    writes BLOB NOT NULL
);
CREATE TABLE inboxd_history_applied (
    seq INTEGER NOT NULL
);
INSERT INTO inboxd_history_applied (seq) VALUES (0);
