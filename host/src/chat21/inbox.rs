//! The copies inboxd publishes into users' inboxes for each kind of event, with the exact
//! routing keys and JSON that chat21 clients subscribe to.

use serde_json::{Map, Value, json};

use super::{InputError, Message, Status, check_id};

/// One publish into one user's inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxCopy {
    /// The user (or group timeline) whose inbox receives it.
    pub inbox_of: String,
    /// `apps.<app>.users.<inbox_of>.…`, the routing key on the topic exchange.
    pub routing_key: String,
    pub body: Value,
}

fn message_copy(message: &Message, inbox_of: &str, convers_with: &str, status: Status) -> InboxCopy {
    let mut body = message.body.clone();
    body.insert("status".into(), status.code().into());
    InboxCopy {
        inbox_of: inbox_of.to_owned(),
        routing_key: format!("apps.{}.users.{inbox_of}.messages.{convers_with}.clientadded", message.app),
        body: Value::Object(body),
    }
}

/// A direct message: the sender's copy (SENT) first, then the recipient's (DELIVERED).
pub fn direct_copies(message: &Message) -> Vec<InboxCopy> {
    vec![
        message_copy(message, &message.sender, &message.recipient, Status::Sent),
        message_copy(message, &message.recipient, &message.sender, Status::Delivered),
    ]
}

/// A group message: the group's own timeline (SENT), then each member (DELIVERED).
///
/// The sender is always a member; duplicates are dropped; members named in
/// `attributes.hiddenFor` get no copy (only they: the old observer stopped at the first).
pub fn group_copies(message: &Message, members: &[String]) -> Vec<InboxCopy> {
    let group = &message.recipient;
    let hidden = message.hidden_for();
    let mut copies = vec![message_copy(message, group, group, Status::Sent)];
    let mut seen = vec![group.as_str()];
    for member in members.iter().map(String::as_str).chain([message.sender.as_str()]) {
        if seen.contains(&member) {
            continue;
        }
        seen.push(member);
        if !hidden.contains(&member) {
            copies.push(message_copy(message, member, group, Status::Delivered));
        }
    }
    copies
}

/// The sender's copy of a message a policy refused: status FAILED, and
/// `attributes.rejection = {plugin, code, reason}` so the sender's app can show why.
pub fn failed_copy(message: &Message, plugin: &str, code: &str, reason: &str) -> InboxCopy {
    let mut copy = message_copy(message, &message.sender, &message.recipient, Status::Failed);
    let body = copy.body.as_object_mut().expect("message copies are objects");
    let attributes = body.entry("attributes").or_insert_with(|| json!({}));
    if !attributes.is_object() {
        *attributes = json!({});
    }
    attributes
        .as_object_mut()
        .expect("made an object above")
        .insert("rejection".into(), json!({"plugin": plugin, "code": code, "reason": reason}));
    copy
}

/// A read receipt by `me` for `message_id` in the conversation with `conversation`: the
/// other side learns it was read (RETURN_RECEIPT). `None` for any status but RECEIVED.
pub fn read_receipt_copy(
    app: &str,
    me: &str,
    conversation: &str,
    message_id: &str,
    patch: &Map<String, Value>,
) -> Option<InboxCopy> {
    if patch.get("status").and_then(Value::as_i64) != Some(Status::Received.code()) {
        return None;
    }
    Some(InboxCopy {
        inbox_of: conversation.to_owned(),
        routing_key: format!("apps.{app}.users.{conversation}.messages.{me}.{message_id}.clientupdated"),
        body: json!({"timelineOf": conversation, "message_id": message_id, "status": Status::ReturnReceipt.code()}),
    })
}

/// A conversation update by `me`: the patch echoed to all of `me`'s clients.
pub fn conversation_update_copy(app: &str, me: &str, conversation: &str, mut patch: Map<String, Value>) -> InboxCopy {
    patch.insert("timelineOf".into(), me.into());
    patch.insert("conversWith".into(), conversation.into());
    InboxCopy {
        inbox_of: me.to_owned(),
        routing_key: format!("apps.{app}.users.{me}.conversations.{conversation}.clientupdated"),
        body: Value::Object(patch),
    }
}

/// A conversation archived by `me`: removed from the list, added to the archived list.
pub fn archive_copies(app: &str, me: &str, conversation: &str) -> Vec<InboxCopy> {
    let body = json!({
        "timelineOf": me,
        "conversWith": conversation,
        "key": conversation,
        "app_id": app,
        "archived": true,
    });
    ["conversations", "archived_conversations"]
        .into_iter()
        .zip(["clientdeleted", "clientadded"])
        .map(|(list, event)| InboxCopy {
            inbox_of: me.to_owned(),
            routing_key: format!("apps.{app}.users.{me}.{list}.{conversation}.{event}"),
            body: body.clone(),
        })
        .collect()
}

/// A server-side group change `{group, notify_to}`: the group JSON to every user in `notify_to`.
///
/// # Errors
/// [`InputError::BadField`] when `group.uid` or `notify_to` is missing,
/// [`InputError::InvalidId`] when an id cannot be routed.
pub fn group_update_copies(app: &str, body: &Map<String, Value>) -> Result<Vec<InboxCopy>, InputError> {
    let group = body
        .get("group")
        .filter(|g| g.is_object())
        .ok_or(InputError::BadField { field: "group", expected: "an object" })?;
    let uid = group
        .get("uid")
        .and_then(Value::as_str)
        .ok_or(InputError::BadField { field: "group.uid", expected: "a string" })?;
    check_id("group", uid)?;
    let notify_to = body
        .get("notify_to")
        .and_then(Value::as_object)
        .ok_or(InputError::BadField { field: "notify_to", expected: "an object" })?;
    notify_to
        .keys()
        .map(|user| {
            check_id("user", user)?;
            Ok(InboxCopy {
                inbox_of: user.clone(),
                routing_key: format!("apps.{app}.users.{user}.groups.{uid}.clientupdated"),
                body: group.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat21::normalise;

    fn message(recipient: &str, body: Value) -> Message {
        normalise("app", "alice", recipient, body.as_object().unwrap().clone(), "m1".into(), 5)
    }

    #[test]
    fn direct_message_gives_sent_then_delivered() {
        let copies = direct_copies(&message("bob", json!({"text":"hi"})));
        assert_eq!(copies[0].routing_key, "apps.app.users.alice.messages.bob.clientadded");
        assert_eq!(copies[0].body["status"], 100);
        assert_eq!(copies[1].routing_key, "apps.app.users.bob.messages.alice.clientadded");
        assert_eq!(copies[1].body["status"], 150);
        assert_eq!(copies[1].body["text"], "hi");
    }

    #[test]
    fn group_message_reaches_timeline_members_and_sender_once() {
        let m = message("g1", json!({"channel_type":"group"}));
        let copies = group_copies(&m, &["bob".into(), "alice".into(), "carol".into()]);
        let keys: Vec<_> = copies.iter().map(|c| (c.inbox_of.as_str(), c.body["status"].as_i64().unwrap())).collect();
        assert_eq!(keys, vec![("g1", 100), ("bob", 150), ("alice", 150), ("carol", 150)]);
        assert!(copies.iter().all(|c| c.routing_key.ends_with(".messages.g1.clientadded")));
    }

    #[test]
    fn hidden_for_skips_only_that_member() {
        let m = message("g1", json!({"channel_type":"group","attributes":{"hiddenFor":"bob"}}));
        let copies = group_copies(&m, &["bob".into(), "carol".into()]);
        let inboxes: Vec<_> = copies.iter().map(|c| c.inbox_of.as_str()).collect();
        assert_eq!(inboxes, vec!["g1", "carol", "alice"]);
    }

    #[test]
    fn failed_copy_goes_to_the_sender_with_the_reason() {
        let copy = failed_copy(&message("bob", json!({"attributes":{"x":1}})), "blocklist", "blocked", "no");
        assert_eq!(copy.routing_key, "apps.app.users.alice.messages.bob.clientadded");
        assert_eq!(copy.body["status"], -100);
        assert_eq!(copy.body["attributes"]["x"], 1);
        assert_eq!(copy.body["attributes"]["rejection"], json!({"plugin":"blocklist","code":"blocked","reason":"no"}));
    }

    #[test]
    fn read_receipt_only_for_received() {
        let ok = read_receipt_copy("app", "bob", "alice", "m1", json!({"status":200}).as_object().unwrap()).unwrap();
        assert_eq!(ok.routing_key, "apps.app.users.alice.messages.bob.m1.clientupdated");
        assert_eq!(ok.body, json!({"timelineOf":"alice","message_id":"m1","status":250}));
        assert!(read_receipt_copy("app", "bob", "alice", "m1", json!({"status":300}).as_object().unwrap()).is_none());
    }

    #[test]
    fn conversation_update_and_archive() {
        let up = conversation_update_copy("app", "bob", "alice", json!({"is_new":false}).as_object().unwrap().clone());
        assert_eq!(up.routing_key, "apps.app.users.bob.conversations.alice.clientupdated");
        assert_eq!(up.body, json!({"is_new":false,"timelineOf":"bob","conversWith":"alice"}));
        let arc = archive_copies("app", "bob", "alice");
        assert_eq!(arc[0].routing_key, "apps.app.users.bob.conversations.alice.clientdeleted");
        assert_eq!(arc[1].routing_key, "apps.app.users.bob.archived_conversations.alice.clientadded");
        assert_eq!(arc[1].body["archived"], true);
    }

    #[test]
    fn group_update_fans_out_to_notify_to() {
        let body = json!({"group":{"uid":"g1","name":"G"},"notify_to":{"u1":1,"u2":1}});
        let copies = group_update_copies("app", body.as_object().unwrap()).unwrap();
        assert_eq!(copies.len(), 2);
        assert_eq!(copies[0].routing_key, "apps.app.users.u1.groups.g1.clientupdated");
        assert_eq!(copies[0].body["name"], "G");
        let bad = json!({"group":{"uid":"g.1"},"notify_to":{}});
        assert_eq!(group_update_copies("app", bad.as_object().unwrap()).unwrap_err().code(), "invalid-id");
        let missing = json!({"notify_to":{}});
        assert_eq!(group_update_copies("app", missing.as_object().unwrap()).unwrap_err().code(), "bad-field");
    }
}
