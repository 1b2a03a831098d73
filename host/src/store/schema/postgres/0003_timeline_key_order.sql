-- The timeline's key leads with the message id: message ids are time-ordered (UUIDv7), so new
-- entries append at one end of the key's b-tree instead of dirtying a page per inbox.
ALTER TABLE inbox_timeline DROP CONSTRAINT inbox_timeline_pkey;
ALTER TABLE inbox_timeline ADD PRIMARY KEY (app, message_id, inbox);
