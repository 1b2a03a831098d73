//! An inbound delivery parsed: its typed topic and its JSON object body, size-checked, with
//! every id bounded so that no key it leads to exceeds AMQP's. Also the conversation key that
//! decides which worker handles it, so order is kept.

use serde_json::{Map, Value};

use super::{ARCHIVE_KEYS, GroupUpdate, InputError, Topic, key, listed_members, message};

/// Input limits from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest body accepted, in bytes; larger ones are dead-lettered.
    pub max_body_bytes: usize,
    /// Most ids a message or a `groups.update` may list in `group.members`; longer lists are
    /// dead-lettered unread.
    pub max_inline_members: usize,
}

/// A delivery that passed the protocol checks.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub topic: Topic,
    pub body: Map<String, Value>,
}

impl Inbound {
    /// Parses the routing key and body of one delivery for `app`.
    ///
    /// Besides the protocol checks, every key the event can lead to must fit AMQP (see
    /// [`key`]): a per-id cap cannot do that, since the keys hold two or three ids and a
    /// group's timeline key holds its id twice.
    ///
    /// # Errors
    /// Any [`InputError`]: the delivery then goes to the dead-letter queue with that reason.
    pub fn parse(app: &str, routing_key: &str, payload: &[u8], limits: Limits) -> Result<Inbound, InputError> {
        let topic = Topic::parse(app, routing_key)?;
        if payload.len() > limits.max_body_bytes {
            return Err(InputError::TooLarge { size: payload.len(), limit: limits.max_body_bytes });
        }
        // chat21 clients archive with `{}`; an empty body means the same.
        let body = if payload.iter().all(u8::is_ascii_whitespace) && matches!(topic, Topic::ConversationArchive { .. })
        {
            Map::new()
        } else {
            match serde_json::from_slice(payload).map_err(|e| InputError::InvalidJson(e.to_string()))? {
                Value::Object(body) => body,
                _ => return Err(InputError::NotAnObject),
            }
        };
        check_keys(app, &topic, &body, limits)?;
        Ok(Inbound { topic, body })
    }

    /// The conversation this event belongs to, as an order-independent pair of ids.
    ///
    /// Events with the same key are handled in order by one worker. A direct chat is the
    /// same conversation seen from both sides; a group is keyed by the group alone.
    pub fn conversation_key(&self) -> (&str, &str) {
        match &self.topic {
            Topic::Outgoing { sender, recipient } => {
                if message::is_group(&self.body, recipient) {
                    (recipient, "")
                } else {
                    ordered(sender, recipient)
                }
            }
            Topic::ReadReceipt { me, conversation, .. }
            | Topic::ConversationUpdate { me, conversation }
            | Topic::ConversationArchive { me, conversation } => ordered(me, conversation),
            Topic::Presence { me, .. } => (me, ""),
            Topic::Delivered { inbox, conversation } => ordered(inbox, conversation),
            Topic::GroupUpdate => {
                let uid = self.body.get("group").and_then(|g| g.get("uid")).and_then(Value::as_str);
                (uid.unwrap_or(""), "")
            }
        }
    }
}

/// Checks the ids of an event against the keys it leads to: the copies of a message (the
/// group's timeline too if it is a group message, and each inline member's), a receipt's, a
/// conversation change's, and a group change's (see [`GroupUpdate::parse`]).
fn check_keys(app: &str, topic: &Topic, body: &Map<String, Value>, limits: Limits) -> Result<(), InputError> {
    match topic {
        Topic::Outgoing { sender, recipient } => {
            // Both sides' copies, and a FAILED one, have the same length.
            key::fits("message copy", &key::message(app, sender, recipient))?;
            if message::is_group(body, recipient) {
                key::fits("group timeline copy", &key::message(app, recipient, recipient))?;
            }
            if let Some(members) = body.get("group").and_then(|g| g.get("members")) {
                listed_members(members, app, recipient, limits.max_inline_members)?;
            }
            Ok(())
        }
        Topic::ReadReceipt { me, conversation, message_id } => {
            key::fits("read receipt", &key::receipt(app, conversation, me, message_id))
        }
        Topic::ConversationUpdate { me, conversation } => key::fits(
            "conversation update",
            &key::conversation(app, me, "conversations", conversation, "clientupdated"),
        ),
        Topic::ConversationArchive { me, conversation } => ARCHIVE_KEYS
            .iter()
            .try_for_each(|(list, event)| key::fits("archive", &key::conversation(app, me, list, conversation, event))),
        Topic::Presence { .. } => Ok(()),
        Topic::Delivered { inbox, conversation } => {
            key::fits("delivered copy", &key::message(app, inbox, conversation))?;
            super::delivered::message_id(body).map(drop)
        }
        Topic::GroupUpdate => GroupUpdate::parse(app, body, limits.max_inline_members).map(drop),
    }
}

fn ordered<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b { (a, b) } else { (b, a) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_body_bytes: 64, max_inline_members: 2 };
    const DM: &str = "apps.tilechat.outgoing.users.alice.messages.bob.outgoing";

    fn parse(key: &str, body: &str) -> Result<Inbound, InputError> {
        Inbound::parse("tilechat", key, body.as_bytes(), LIMITS)
    }

    #[test]
    fn refuses_bad_bodies_with_their_reason() {
        assert_eq!(parse(DM, "{nope").unwrap_err().code(), "invalid-json");
        assert_eq!(parse(DM, "[1,2]").unwrap_err().code(), "not-an-object");
        assert_eq!(parse(DM, "\"text\"").unwrap_err().code(), "not-an-object");
        assert_eq!(parse(DM, "").unwrap_err().code(), "invalid-json");
        let big = format!("{{\"text\":\"{}\"}}", "x".repeat(100));
        assert_eq!(parse(DM, &big).unwrap_err(), InputError::TooLarge { size: 111, limit: 64 });
    }

    #[test]
    fn refuses_ids_whose_keys_cannot_fit_before_reading_members() {
        let id = |n: usize| "x".repeat(n);
        let code = |key: &str, body: &str| {
            Inbound::parse("tilechat", key, body.as_bytes(), Limits { max_body_bytes: 4096, ..LIMITS })
                .unwrap_err()
                .code()
        };
        // A 110-byte group id fits the inbound key but not twice in the timeline's.
        let group = format!("team-{}", id(105));
        let to_group = format!("apps.tilechat.outgoing.users.alice.messages.{group}.outgoing");
        assert!(parse(&to_group, "{}").is_ok());
        assert_eq!(code(&to_group, r#"{"channel_type":"group"}"#), "id-too-long");
        // Near-255-byte receipt, update and archive keys grow past 255 on the way out.
        let receipt = format!("apps.tilechat.users.bob.messages.{}.m1.update", id(210));
        assert_eq!(code(&receipt, r#"{"status":200}"#), "id-too-long");
        let update = format!("apps.tilechat.users.bob.conversations.{}.update", id(210));
        assert_eq!(code(&update, "{}"), "id-too-long");
        let archive = format!("apps.tilechat.users.bob.conversations.{}.archive", id(205));
        assert_eq!(code(&archive, "{}"), "id-too-long");
        // Inline members: the count first, then each id.
        let dm = "apps.tilechat.outgoing.users.alice.messages.g1.outgoing";
        assert_eq!(code(dm, r#"{"group":{"members":{"a":1,"b":1,"c":1}}}"#), "too-many-members");
        assert_eq!(code(dm, r#"{"group":{"members":{"a":1,"b+":1}}}"#), "invalid-id");
        assert_eq!(code(dm, &format!(r#"{{"group":{{"members":{{"{}":1}}}}}}"#, id(300))), "id-too-long");
        let update = "apps.observer.tilechat.groups.update";
        assert_eq!(code(update, &format!(r#"{{"group":{{"uid":"{}"}},"notify_to":{{}}}}"#, id(110))), "id-too-long");
    }

    #[test]
    fn archive_accepts_an_empty_body() {
        let key = "apps.tilechat.users.bob.conversations.alice.archive";
        assert!(parse(key, "").unwrap().body.is_empty());
        assert!(parse(key, "{}").unwrap().body.is_empty());
    }

    #[test]
    fn both_directions_of_a_direct_chat_share_a_key() {
        let ab = parse(DM, "{}").unwrap();
        let ba = parse("apps.tilechat.outgoing.users.bob.messages.alice.outgoing", "{}").unwrap();
        assert_eq!(ab.conversation_key(), ba.conversation_key());
        let receipt = parse("apps.tilechat.users.bob.messages.alice.m1.update", "{}").unwrap();
        assert_eq!(receipt.conversation_key(), ab.conversation_key());
    }

    #[test]
    fn group_messages_are_keyed_by_the_group() {
        let a = parse("apps.tilechat.outgoing.users.alice.messages.g1.outgoing", r#"{"channel_type":"group"}"#);
        let b = parse("apps.tilechat.outgoing.users.bob.messages.g1.outgoing", r#"{"channel_type":"group"}"#);
        assert_eq!(a.unwrap().conversation_key(), b.unwrap().conversation_key());
    }
}
