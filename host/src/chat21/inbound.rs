//! An inbound delivery parsed: its typed topic and its JSON object body, size-checked.
//! Also the conversation key that decides which worker handles it, so order is kept.

use serde_json::{Map, Value};

use super::{InputError, Topic};

/// Input limits from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest body accepted, in bytes; larger ones are dead-lettered.
    pub max_body_bytes: usize,
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
    /// # Errors
    /// Any [`InputError`]: the delivery then goes to the dead-letter queue with that reason.
    pub fn parse(app: &str, routing_key: &str, payload: &[u8], limits: Limits) -> Result<Inbound, InputError> {
        let topic = Topic::parse(app, routing_key)?;
        if payload.len() > limits.max_body_bytes {
            return Err(InputError::TooLarge { size: payload.len(), limit: limits.max_body_bytes });
        }
        // chat21 clients archive with `{}`; an empty body means the same.
        if payload.iter().all(u8::is_ascii_whitespace) && matches!(topic, Topic::ConversationArchive { .. }) {
            return Ok(Inbound { topic, body: Map::new() });
        }
        let value: Value = serde_json::from_slice(payload).map_err(|e| InputError::InvalidJson(e.to_string()))?;
        match value {
            Value::Object(body) => Ok(Inbound { topic, body }),
            _ => Err(InputError::NotAnObject),
        }
    }

    /// The conversation this event belongs to, as an order-independent pair of ids.
    ///
    /// Events with the same key are handled in order by one worker. A direct chat is the
    /// same conversation seen from both sides; a group is keyed by the group alone.
    pub fn conversation_key(&self) -> (&str, &str) {
        match &self.topic {
            Topic::Outgoing { sender, recipient } => {
                if super::message::is_group(&self.body, recipient) {
                    (recipient, "")
                } else {
                    ordered(sender, recipient)
                }
            }
            Topic::ReadReceipt { me, conversation, .. }
            | Topic::ConversationUpdate { me, conversation }
            | Topic::ConversationArchive { me, conversation } => ordered(me, conversation),
            Topic::Presence { me, .. } => (me, ""),
            Topic::GroupUpdate => {
                let uid = self.body.get("group").and_then(|g| g.get("uid")).and_then(Value::as_str);
                (uid.unwrap_or(""), "")
            }
        }
    }
}

fn ordered<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b { (a, b) } else { (b, a) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_body_bytes: 64 };
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
