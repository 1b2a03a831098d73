//! Hostile input against the HTTP listener: history tokens, page caps, request limits.
