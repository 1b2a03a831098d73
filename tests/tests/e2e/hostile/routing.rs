//! Hostile input against routing: long ids, inline members, unknown groups, panics.
