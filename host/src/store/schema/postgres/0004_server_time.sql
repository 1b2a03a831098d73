-- Until version 4 a message's client `timestamp` dated its timeline entry and its conversation,
-- and one dated in the future pinned a conversation (later messages did not replace it). Since,
-- inboxd dates them by its own clock; what lies ahead of it now is brought back to now.
UPDATE inbox_conversations SET updated_at = (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT
    WHERE updated_at > (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT;
UPDATE inbox_timeline SET sent_at = (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT
    WHERE sent_at > (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT;
