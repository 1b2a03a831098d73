//! A chat message after normalisation: the protected fields come from the routing key and
//! the daemon, never from the body the client sent.

use serde_json::{Map, Value};

use super::{InputError, check_id, key};

/// A normalised chat message. `body` is the JSON that recipients receive, minus `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub app: String,
    pub sender: String,
    pub recipient: String,
    pub message_id: String,
    pub body: Map<String, Value>,
    /// When inboxd received it (ms since the Unix epoch); shown to policy plugins.
    pub received_at_ms: i64,
}

/// A message a policy parked for a moderator, normalised (protected fields already set).
#[derive(Debug, Clone, PartialEq)]
pub struct HeldMessage {
    pub message: Message,
    /// The plugin that held it.
    pub plugin: String,
    /// The plugin's reason, for the moderator.
    pub reason: String,
}

/// How far ahead of the server's clock a client's `timestamp` may be, in milliseconds. A later
/// one (a wrong or hostile clock) is replaced by the server's time, so it cannot sort a message
/// ahead of everything sent after it.
pub const MAX_CLIENT_CLOCK_SKEW_MS: i64 = 60_000;

/// Builds the normalised message for an outgoing publish by `sender` to `recipient`.
///
/// `message_id`, `sender`, `recipient` and `app_id` are overwritten whatever the client
/// claimed; `timestamp` (ms) is the client's if it is a number at most
/// [`MAX_CLIENT_CLOCK_SKEW_MS`] ahead of `now_ms`, else `now_ms`.
pub fn normalise(
    app: &str,
    sender: &str,
    recipient: &str,
    body: Map<String, Value>,
    message_id: String,
    now_ms: i64,
) -> Message {
    let mut message = Message {
        app: app.to_owned(),
        sender: sender.to_owned(),
        recipient: recipient.to_owned(),
        message_id,
        body,
        received_at_ms: now_ms,
    };
    let latest = now_ms.saturating_add(MAX_CLIENT_CLOCK_SKEW_MS) as f64;
    if !message.body.get("timestamp").and_then(Value::as_f64).is_some_and(|t| t <= latest) {
        message.body.insert("timestamp".into(), now_ms.into());
    }
    message.protect();
    message
}

impl Message {
    /// (Re)writes the protected fields into the body, e.g. after a policy replaced it.
    pub fn protect(&mut self) {
        let fields = [
            ("message_id", &self.message_id),
            ("sender", &self.sender),
            ("recipient", &self.recipient),
            ("app_id", &self.app),
        ];
        for (key, value) in fields {
            self.body.insert(key.into(), Value::String(value.clone()));
        }
    }

    /// Whether this is a group message (chat21's rule: `channel_type` or a `group-` id).
    pub fn is_group(&self) -> bool {
        is_group(&self.body, &self.recipient)
    }

    /// Takes the inline `group.members` out of the body, so that no copy echoes the list.
    pub fn take_inline_members(&mut self) -> Option<Value> {
        let group = self.body.get_mut("group")?.as_object_mut()?;
        let members = group.remove("members");
        // A `group` that only listed the members leaves nothing behind in the copies.
        if members.is_some() && group.is_empty() {
            self.body.remove("group");
        }
        members
    }

    /// The users this message must not be shown to (`attributes.hiddenFor`: one id or a list).
    pub fn hidden_for(&self) -> Vec<&str> {
        match self.body.get("attributes").and_then(|a| a.get("hiddenFor")) {
            Some(Value::String(one)) => vec![one.as_str()],
            Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
}

/// The ids of an inline `group.members` object of a message to `group`, checked before any
/// use: at most `max` of them (counted before one is looked at), each a routable id whose copy
/// key fits AMQP.
///
/// # Errors
/// [`InputError::BadField`] if `members` is not an object, [`InputError::TooManyMembers`] over
/// `max`, [`InputError::InvalidId`] or [`InputError::IdTooLong`] for an id that cannot be routed.
pub fn listed_members<'a>(members: &'a Value, app: &str, group: &str, max: usize) -> Result<Vec<&'a str>, InputError> {
    let members = members.as_object().ok_or(InputError::BadField { field: "group.members", expected: "an object" })?;
    if members.len() > max {
        return Err(InputError::TooManyMembers { count: members.len(), limit: max });
    }
    members
        .keys()
        .map(|id| {
            check_id("member", id)?;
            key::fits("member's copy", &key::message(app, id, group))?;
            Ok(id.as_str())
        })
        .collect()
}

/// chat21's group test: `channel_type == "group"`, or a recipient id containing `group-`.
pub fn is_group(body: &Map<String, Value>, recipient: &str) -> bool {
    body.get("channel_type").and_then(Value::as_str) == Some("group") || recipient.contains("group-")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn protected_fields_come_from_the_route_not_the_body() {
        let claimed = body(json!({"text":"hi","sender":"mallory","recipient":"x","app_id":"evil","message_id":"m"}));
        let m = normalise("tilechat", "alice", "bob", claimed, "id-1".into(), 42);
        assert_eq!(m.body["sender"], "alice");
        assert_eq!(m.body["recipient"], "bob");
        assert_eq!(m.body["app_id"], "tilechat");
        assert_eq!(m.body["message_id"], "id-1");
        assert_eq!(m.body["timestamp"], 42);
        assert_eq!(m.body["text"], "hi");
    }

    #[test]
    fn client_timestamp_is_kept_unless_ahead_of_the_server_or_not_a_number() {
        let stamp = |t: Value| normalise("a", "s", "r", body(json!({"timestamp": t})), "i".into(), 100_000).body;
        assert_eq!(stamp(json!(7))["timestamp"], 7);
        assert_eq!(stamp(json!(160_000))["timestamp"], 160_000);
        assert_eq!(stamp(json!(160_001))["timestamp"], 100_000);
        assert_eq!(stamp(json!(4_102_444_800_000_u64))["timestamp"], 100_000);
        assert_eq!(stamp(json!(1e300))["timestamp"], 100_000);
        assert_eq!(stamp(json!("7"))["timestamp"], 100_000);
        assert_eq!(stamp(json!({"t": 1}))["timestamp"], 100_000);
        assert_eq!(stamp(Value::Null)["timestamp"], 100_000);
    }

    #[test]
    fn group_detection_and_members() {
        let mut m = normalise(
            "a",
            "s",
            "g1",
            body(json!({"channel_type":"group","group":{"name":"G","members":{"u1":1,"u2":1}}})),
            "i".into(),
            1,
        );
        assert!(m.is_group());
        let members = m.take_inline_members().unwrap();
        assert_eq!(m.body["group"], json!({"name":"G"}));
        assert_eq!(listed_members(&members, "a", "g1", 2).unwrap(), vec!["u1", "u2"]);
        assert_eq!(listed_members(&members, "a", "g1", 1).unwrap_err().code(), "too-many-members");
        assert!(is_group(&Map::new(), "group-42"));
        assert!(!is_group(&Map::new(), "bob"));
        assert_eq!(listed_members(&json!({"u.1":1}), "a", "g1", 9).unwrap_err().code(), "invalid-id");
        assert_eq!(listed_members(&json!([1]), "a", "g1", 9).unwrap_err().code(), "bad-field");
        let long = json!({"u".repeat(250): 1});
        assert_eq!(listed_members(&long, "a", "g1", 9).unwrap_err().code(), "id-too-long");
    }

    #[test]
    fn hidden_for_takes_one_id_or_a_list() {
        let one = normalise("a", "s", "g", body(json!({"attributes":{"hiddenFor":"u1"}})), "i".into(), 1);
        assert_eq!(one.hidden_for(), vec!["u1"]);
        let many = normalise("a", "s", "g", body(json!({"attributes":{"hiddenFor":["u1","u2"]}})), "i".into(), 1);
        assert_eq!(many.hidden_for(), vec!["u1", "u2"]);
    }
}
