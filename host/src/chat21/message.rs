//! A chat message after normalisation: the protected fields come from the routing key and
//! the daemon, never from the body the client sent.

use serde_json::{Map, Value};

use super::{InputError, check_id};

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

/// Builds the normalised message for an outgoing publish by `sender` to `recipient`.
///
/// `message_id`, `sender`, `recipient` and `app_id` are overwritten whatever the client
/// claimed; `timestamp` (ms) is kept if the client sent one, else set to `now_ms`.
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
    if message.body.get("timestamp").is_none_or(Value::is_null) {
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

    /// The members listed inline in `group.members`, if the client sent any.
    ///
    /// # Errors
    /// [`InputError::BadField`] if `group.members` is not an object,
    /// [`InputError::InvalidId`] if a member id cannot be routed.
    pub fn inline_members(&self) -> Result<Option<Vec<String>>, InputError> {
        let Some(group) = self.body.get("group") else { return Ok(None) };
        let members = group
            .get("members")
            .and_then(Value::as_object)
            .ok_or(InputError::BadField { field: "group.members", expected: "an object" })?;
        members.keys().map(|id| check_id("member", id).map(|()| id.clone())).collect::<Result<Vec<_>, _>>().map(Some)
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
    fn client_timestamp_is_kept() {
        let m = normalise("a", "s", "r", body(json!({"timestamp": 7})), "i".into(), 42);
        assert_eq!(m.body["timestamp"], 7);
    }

    #[test]
    fn group_detection_and_members() {
        let m = normalise(
            "a",
            "s",
            "g1",
            body(json!({"channel_type":"group","group":{"members":{"u1":1,"u2":1}}})),
            "i".into(),
            1,
        );
        assert!(m.is_group());
        assert_eq!(m.inline_members().unwrap().unwrap(), vec!["u1", "u2"]);
        assert!(is_group(&Map::new(), "group-42"));
        assert!(!is_group(&Map::new(), "bob"));
        let bad = normalise("a", "s", "g1", body(json!({"group":{"members":{"u.1":1}}})), "i".into(), 1);
        assert_eq!(bad.inline_members().unwrap_err().code(), "invalid-id");
        let none = normalise("a", "s", "g1", body(json!({"group":{"members":[1]}})), "i".into(), 1);
        assert_eq!(none.inline_members().unwrap_err().code(), "bad-field");
    }

    #[test]
    fn hidden_for_takes_one_id_or_a_list() {
        let one = normalise("a", "s", "g", body(json!({"attributes":{"hiddenFor":"u1"}})), "i".into(), 1);
        assert_eq!(one.hidden_for(), vec!["u1"]);
        let many = normalise("a", "s", "g", body(json!({"attributes":{"hiddenFor":["u1","u2"]}})), "i".into(), 1);
        assert_eq!(many.hidden_for(), vec!["u1", "u2"]);
    }
}
