-- Timeline entries: one row per inbox copy; a row without body is a status that arrived first.
CREATE TABLE inbox_timeline (
    app TEXT NOT NULL,
    inbox TEXT NOT NULL,
    message_id TEXT NOT NULL,
    conversation TEXT NOT NULL,
    status BIGINT NOT NULL,
    sent_at BIGINT NOT NULL,
    body TEXT,
    PRIMARY KEY (app, inbox, message_id)
);
CREATE INDEX inbox_timeline_by_conversation ON inbox_timeline (app, inbox, conversation, sent_at);

-- Each user's conversation list: the last message and the flags the user set.
CREATE TABLE inbox_conversations (
    app TEXT NOT NULL,
    inbox TEXT NOT NULL,
    conversation TEXT NOT NULL,
    last_message TEXT,
    is_new BIGINT NOT NULL,
    archived BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (app, inbox, conversation)
);
CREATE INDEX inbox_conversations_by_time ON inbox_conversations (app, inbox, archived, updated_at);

-- Groups as the server side last announced them on groups.update.
CREATE TABLE chat_groups (
    app TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT,
    owner TEXT,
    members TEXT NOT NULL,
    body TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (app, id)
);
