//! What a member who joins a group is given of its past: the group timeline's last
//! [`JOIN_HISTORY`] messages, copied into the member's inbox as chat21's `joinGroupMessages`
//! does (status DELIVERED, `__history: "true"`, no push unless `forcenotification`) — read from
//! the store and published from here, since the API is the server side (chat21-http-server
//! publishes them on `apps.observer.…delivered`, which the pipeline also delivers as is).

use serde_json::{Value, json};

use crate::chat21::{Status, key};
use crate::clock::now_ms;
use crate::store::Store;
use crate::store::records::{Write, received_at};

/// Messages of the group's timeline a new member is given (chat21's 200).
pub const JOIN_HISTORY: i64 = 200;

/// A history copy: its routing key, its body, and its row in the member's timeline.
pub struct HistoryCopy {
    pub key: String,
    pub body: Value,
    pub write: Write,
}

/// The copies of `group`'s last [`JOIN_HISTORY`] messages for `member`, oldest first.
///
/// # Errors
/// When the store cannot be read.
pub async fn copies(store: &Store, app: &str, group: &str, member: &str) -> anyhow::Result<Vec<HistoryCopy>> {
    let mut messages = store.messages(app, group, group, None, JOIN_HISTORY).await?;
    messages.reverse();
    Ok(messages.into_iter().filter_map(|message| copy(app, group, member, message)).collect())
}

/// One message of the group's timeline as `member`'s history copy; `None` for a row that is not
/// a message with an id, or whose key cannot be built.
fn copy(app: &str, group: &str, member: &str, message: Value) -> Option<HistoryCopy> {
    let Value::Object(mut body) = message else { return None };
    let message_id = body.get("message_id")?.as_str()?.to_owned();
    let key = key::build("history copy", &key::message(app, member, group)).ok()?;
    body.insert("__history".into(), "true".into());
    body.insert("status".into(), Status::Delivered.code().into());
    let attributes = body.entry("attributes").or_insert_with(|| json!({}));
    if !attributes.is_object() {
        *attributes = json!({});
    }
    if let Some(attributes) = attributes.as_object_mut()
        && attributes.get("forcenotification") != Some(&Value::Bool(true))
    {
        attributes.insert("sendnotification".into(), false.into());
    }
    let keeps_list = body.get("attributes").and_then(|a| a.get("updateconversation")) != Some(&Value::Bool(false));
    let write = Write::Message {
        inbox: member.to_owned(),
        conversation: group.to_owned(),
        message_id: message_id.clone(),
        status: Status::Delivered.code(),
        sent_at: received_at(&message_id, now_ms()),
        body: Value::Object(body.clone()).to_string().into(),
        conversation_update: keeps_list.then_some(true),
    };
    Some(HistoryCopy { key, body: Value::Object(body), write })
}

/// The bodies to publish and the rows to write of `copies`.
pub fn split(copies: Vec<HistoryCopy>) -> (Vec<(String, Value)>, Vec<Write>) {
    copies.into_iter().map(|c| ((c.key, c.body), c.write)).unzip()
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_history_copy_is_delivered_marked_and_silent() {
        let message = json!({"message_id":"m1","text":"hi","status":100,"attributes":{"x":1}});
        let copy = copy("app", "g1", "carol", message).unwrap();
        assert_eq!(copy.key, "apps.app.users.carol.messages.g1.clientadded");
        let body = object(copy.body);
        assert_eq!((&body["__history"], &body["status"]), (&json!("true"), &json!(150)));
        assert_eq!(body["attributes"], json!({"x":1,"sendnotification":false}));
        let Write::Message { inbox, conversation, status, conversation_update, .. } = copy.write else { panic!() };
        assert_eq!(
            (inbox.as_str(), conversation.as_str(), status, conversation_update),
            ("carol", "g1", 150, Some(true))
        );
    }

    #[test]
    fn forced_notifications_and_quiet_messages_keep_their_attributes() {
        let forced = json!({"message_id":"m1","attributes":{"forcenotification":true,"updateconversation":false}});
        let copy = copy("app", "g1", "carol", forced).unwrap();
        assert!(copy.body["attributes"].get("sendnotification").is_none());
        assert!(matches!(copy.write, Write::Message { conversation_update: None, .. }));
        assert_eq!(copy.body["attributes"].as_object().map(Map::len), Some(2));
        assert!(super::copy("app", "g1", "carol", json!({"text":"no id"})).is_none());
    }
}
