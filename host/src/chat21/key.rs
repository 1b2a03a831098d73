//! The routing keys inboxd publishes to, one function per shape, bounded by AMQP's 255 bytes.
//! Parsing checks the same shapes before any work, so an id that cannot fit is refused up front.

use super::InputError;

/// Longest routing key AMQP 0-9-1 carries (a short string), in bytes. Outbound keys are longer
/// than the inbound ones they come from (a group id appears twice in its timeline's key).
pub const MAX_ROUTING_KEY_BYTES: usize = 255;

/// A routing key as its words, before they are joined with `.`.
pub type Words<'a, const N: usize> = [&'a str; N];

/// `apps.<app>.users.<inbox>.messages.<conversation>.clientadded`: a message copy.
pub fn message<'a>(app: &'a str, inbox: &'a str, conversation: &'a str) -> Words<'a, 7> {
    ["apps", app, "users", inbox, "messages", conversation, "clientadded"]
}

/// `apps.<app>.users.<inbox>.messages.<reader>.<message_id>.clientupdated`: a read receipt.
pub fn receipt<'a>(app: &'a str, inbox: &'a str, reader: &'a str, message_id: &'a str) -> Words<'a, 8> {
    ["apps", app, "users", inbox, "messages", reader, message_id, "clientupdated"]
}

/// `apps.<app>.users.<me>.<list>.<conversation>.<event>`: a conversation list change.
pub fn conversation<'a>(
    app: &'a str,
    me: &'a str,
    list: &'a str,
    conversation: &'a str,
    event: &'a str,
) -> Words<'a, 7> {
    ["apps", app, "users", me, list, conversation, event]
}

/// `apps.<app>.users.<user>.groups.<group>.clientupdated`: a group change.
pub fn group<'a>(app: &'a str, user: &'a str, group: &'a str) -> Words<'a, 7> {
    ["apps", app, "users", user, "groups", group, "clientupdated"]
}

/// The length of the key `words` make, in bytes, without building it.
pub fn len(words: &[&str]) -> usize {
    words.iter().map(|w| w.len()).sum::<usize>() + words.len().saturating_sub(1)
}

/// Checks that the key `words` make fits AMQP; `what` names the copy for the error.
///
/// # Errors
/// [`InputError::IdTooLong`] when it would exceed [`MAX_ROUTING_KEY_BYTES`].
pub fn fits(what: &'static str, words: &[&str]) -> Result<(), InputError> {
    let bytes = len(words);
    if bytes > MAX_ROUTING_KEY_BYTES {
        return Err(InputError::IdTooLong { what, bytes });
    }
    Ok(())
}

/// Builds the key `words` make.
///
/// # Errors
/// [`InputError::IdTooLong`] when it would exceed [`MAX_ROUTING_KEY_BYTES`].
pub fn build(what: &'static str, words: &[&str]) -> Result<String, InputError> {
    fits(what, words)?;
    Ok(words.join("."))
}

/// The last words of the keys inboxd publishes to.
const EVENTS: [&str; 3] = ["clientadded", "clientupdated", "clientdeleted"];

/// What every key inboxd publishes to for `app` satisfies (the fuzz target and the property
/// test assert it): at most [`MAX_ROUTING_KEY_BYTES`], no empty word and no `*` or `#`, and it
/// reads back as `apps.<app>.users.<inbox_of>.<list>.<id>[.<id>].<event>` with routable ids.
///
/// # Errors
/// What is wrong with `key`, for the failure message.
pub fn check_published(app: &str, inbox_of: &str, key: &str) -> Result<(), String> {
    let words: Vec<&str> = key.split('.').collect();
    let bad = if key.len() > MAX_ROUTING_KEY_BYTES {
        "longer than 255 bytes"
    } else if key.contains(['*', '#']) || words.iter().any(|w| w.is_empty()) {
        "a wildcard or an empty word"
    } else if !(7..=8).contains(&words.len()) || words[..4] != ["apps", app, "users", inbox_of] {
        "not apps.<app>.users.<inbox>.…"
    } else if !["messages", "conversations", "archived_conversations", "groups"].contains(&words[4]) {
        "an unknown list"
    } else if !EVENTS.contains(&words[words.len() - 1]) {
        "an unknown event"
    } else if words[3..words.len() - 1].iter().any(|id| super::check_id("id", id).is_err()) {
        "an id that cannot be routed"
    } else {
        return Ok(());
    };
    Err(format!("{key:?} for inbox {inbox_of:?}: {bad}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn len_is_the_joined_length() {
        for words in [&["a"][..], &["apps", "x", "users"], &["", ""], &[]] {
            assert_eq!(len(words), words.join(".").len());
        }
    }

    #[test]
    fn published_keys_read_back() {
        assert!(check_published("a", "bob", "apps.a.users.bob.messages.alice.clientadded").is_ok());
        assert!(check_published("a", "bob", "apps.a.users.bob.messages.alice.m1.clientupdated").is_ok());
        for bad in [
            "apps.a.users.bob.messages..clientadded",
            "apps.a.users.bob.messages.*.clientadded",
            "apps.a.users.carol.messages.alice.clientadded",
            "apps.a.users.bob.presence.alice.clientadded",
            "apps.a.users.bob.messages.alice.outgoing",
        ] {
            assert!(check_published("a", "bob", bad).is_err(), "{bad}");
        }
        let long = format!("apps.a.users.bob.messages.{}.clientadded", "x".repeat(230));
        assert!(check_published("a", "bob", &long).unwrap_err().contains("255"));
    }

    #[test]
    fn a_key_of_255_bytes_fits_and_256_does_not() {
        let id = |n: usize| "x".repeat(n);
        // "apps.a.users." + inbox + ".messages.c.clientadded" = 13 + inbox + 23
        let fitting = id(MAX_ROUTING_KEY_BYTES - 36);
        assert_eq!(build("copy", &message("a", &fitting, "c")).unwrap().len(), MAX_ROUTING_KEY_BYTES);
        let over = id(MAX_ROUTING_KEY_BYTES - 35);
        assert_eq!(
            build("copy", &message("a", &over, "c")).unwrap_err(),
            InputError::IdTooLong { what: "copy", bytes: 256 }
        );
    }
}
