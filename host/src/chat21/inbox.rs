//! The copies inboxd publishes into users' inboxes for each kind of event, with the exact
//! routing keys and JSON that chat21 clients subscribe to.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use super::{GroupUpdate, InputError, Message, Payload, Status, key};

/// One publish into one user's inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxCopy {
    /// The user (or group timeline) whose inbox receives it.
    pub inbox_of: String,
    /// What it belongs to in that inbox: the other side of a message copy's conversation (the
    /// group, in a group), the reader of a receipt, the conversation updated or archived, the
    /// group changed.
    pub conversation: String,
    /// The status it carries: a message copy's, or a receipt's RETURN_RECEIPT.
    pub status: Option<Status>,
    /// `apps.<app>.users.<inbox_of>.…`, the routing key on the topic exchange; at most
    /// [`key::MAX_ROUTING_KEY_BYTES`] (building a longer one is an error, never a publish).
    pub routing_key: String,
    /// Shared by the copies that carry the same JSON.
    pub body: Payload,
}

/// The message's body with `status`, serialised once for all the copies that carry it.
pub fn message_payload(message: &Message, status: Status) -> Payload {
    let mut body = message.body.clone();
    body.insert("status".into(), status.code().into());
    Payload::new(Value::Object(body))
}

/// A message's body with its status, to share between copies.
#[derive(Debug, Clone)]
pub struct StatusBody {
    pub status: Status,
    pub body: Payload,
}

impl StatusBody {
    /// `message`'s body with `status`, serialised once.
    pub fn of(message: &Message, status: Status) -> StatusBody {
        StatusBody { status, body: message_payload(message, status) }
    }
}

/// The copy of `message` in `inbox_of`'s conversation with `convers_with`.
///
/// # Errors
/// [`InputError::IdTooLong`] when the key would not fit AMQP.
pub fn message_copy(
    message: &Message,
    inbox_of: &str,
    convers_with: &str,
    body: &StatusBody,
) -> Result<InboxCopy, InputError> {
    Ok(InboxCopy {
        inbox_of: inbox_of.to_owned(),
        conversation: convers_with.to_owned(),
        status: Some(body.status),
        routing_key: key::build("message copy", &key::message(&message.app, inbox_of, convers_with))?,
        body: body.body.clone(),
    })
}

/// A direct message: the sender's copy (SENT) first, then the recipient's (DELIVERED).
///
/// # Errors
/// [`InputError::IdTooLong`] when a key would not fit AMQP.
pub fn direct_copies(message: &Message) -> Result<Vec<InboxCopy>, InputError> {
    Ok(vec![
        message_copy(message, &message.sender, &message.recipient, &StatusBody::of(message, Status::Sent))?,
        message_copy(message, &message.recipient, &message.sender, &StatusBody::of(message, Status::Delivered))?,
    ])
}

/// A group message: the group's own timeline (SENT), then each member (DELIVERED), all the
/// members sharing one body.
///
/// The sender is always a member; duplicates are dropped (a hash set: linear in the members);
/// members named in `attributes.hiddenFor` get no copy (only they: the old observer stopped at
/// the first).
///
/// # Errors
/// [`InputError::IdTooLong`] when a key would not fit AMQP.
pub fn group_copies<'a>(
    message: &'a Message,
    members: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<InboxCopy>, InputError> {
    let group = message.recipient.as_str();
    let hidden: HashSet<&str> = message.hidden_for().into_iter().collect();
    let mut copies = vec![message_copy(message, group, group, &StatusBody::of(message, Status::Sent))?];
    let delivered = StatusBody::of(message, Status::Delivered);
    let mut seen = HashSet::from([group]);
    for member in members.into_iter().chain([message.sender.as_str()]) {
        if seen.insert(member) && !hidden.contains(member) {
            copies.push(message_copy(message, member, group, &delivered)?);
        }
    }
    Ok(copies)
}

/// The sender's copy of a message a policy refused: status FAILED, and
/// `attributes.rejection = {plugin, code, reason}` so the sender's app can show why.
///
/// # Errors
/// [`InputError::IdTooLong`] when the key would not fit AMQP.
pub fn failed_copy(message: &Message, plugin: &str, code: &str, reason: &str) -> Result<InboxCopy, InputError> {
    let mut body = message.body.clone();
    body.insert("status".into(), Status::Failed.code().into());
    let attributes = body.entry("attributes").or_insert_with(|| json!({}));
    if !attributes.is_object() {
        *attributes = json!({});
    }
    if let Some(attributes) = attributes.as_object_mut() {
        attributes.insert("rejection".into(), json!({"plugin": plugin, "code": code, "reason": reason}));
    }
    let body = StatusBody { status: Status::Failed, body: Payload::new(Value::Object(body)) };
    message_copy(message, &message.sender, &message.recipient, &body)
}

/// A read receipt by `me` for `message_id` in the conversation with `conversation`: the
/// other side learns it was read (RETURN_RECEIPT). `None` for any status but RECEIVED.
///
/// # Errors
/// [`InputError::IdTooLong`] when the key would not fit AMQP.
pub fn read_receipt_copy(
    app: &str,
    me: &str,
    conversation: &str,
    message_id: &str,
    patch: &Map<String, Value>,
) -> Result<Option<InboxCopy>, InputError> {
    if patch.get("status").and_then(Value::as_i64) != Some(Status::Received.code()) {
        return Ok(None);
    }
    Ok(Some(InboxCopy {
        inbox_of: conversation.to_owned(),
        conversation: me.to_owned(),
        status: Some(Status::ReturnReceipt),
        routing_key: key::build("read receipt", &key::receipt(app, conversation, me, message_id))?,
        body: Payload::new(
            json!({"timelineOf": conversation, "message_id": message_id, "status": Status::ReturnReceipt.code()}),
        ),
    }))
}

/// A conversation update by `me`: the patch echoed to all of `me`'s clients.
///
/// # Errors
/// [`InputError::IdTooLong`] when the key would not fit AMQP.
pub fn conversation_update_copy(
    app: &str,
    me: &str,
    conversation: &str,
    mut patch: Map<String, Value>,
) -> Result<InboxCopy, InputError> {
    let routing_key =
        key::build("conversation update", &key::conversation(app, me, "conversations", conversation, "clientupdated"))?;
    patch.insert("timelineOf".into(), me.into());
    patch.insert("conversWith".into(), conversation.into());
    Ok(InboxCopy {
        inbox_of: me.to_owned(),
        conversation: conversation.to_owned(),
        status: None,
        routing_key,
        body: Payload::new(Value::Object(patch)),
    })
}

/// The lists and events of an archive: removed from the list, added to the archived list.
pub const ARCHIVE_KEYS: [(&str, &str); 2] =
    [("conversations", "clientdeleted"), ("archived_conversations", "clientadded")];

/// A conversation archived by `me`: removed from the list, added to the archived list, each
/// copy carrying `stored`, the conversation as stored (chat21 publishes its stored document),
/// marked `archived`.
///
/// # Errors
/// [`InputError::IdTooLong`] when a key would not fit AMQP.
pub fn archive_copies(
    app: &str,
    me: &str,
    conversation: &str,
    mut stored: Map<String, Value>,
) -> Result<Vec<InboxCopy>, InputError> {
    stored.insert("archived".into(), true.into());
    let body = Payload::new(Value::Object(stored));
    ARCHIVE_KEYS
        .into_iter()
        .map(|(list, event)| {
            Ok(InboxCopy {
                inbox_of: me.to_owned(),
                conversation: conversation.to_owned(),
                status: None,
                routing_key: key::build("archive", &key::conversation(app, me, list, conversation, event))?,
                body: body.clone(),
            })
        })
        .collect()
}

/// A server-side group change: the group JSON to every user in `notify_to`.
///
/// # Errors
/// [`InputError::IdTooLong`] when a key would not fit AMQP (never for a checked update).
pub fn group_update_copies(app: &str, update: &GroupUpdate) -> Result<Vec<InboxCopy>, InputError> {
    let uid = update.group.id.as_str();
    let payload = Payload::new(update.group.body.clone());
    update
        .notify_to
        .iter()
        .map(|user| {
            Ok(InboxCopy {
                inbox_of: user.clone(),
                conversation: uid.to_owned(),
                status: None,
                routing_key: key::build("group update", &key::group(app, user, uid))?,
                body: payload.clone(),
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
        let copies = direct_copies(&message("bob", json!({"text":"hi"}))).unwrap();
        assert_eq!(copies[0].routing_key, "apps.app.users.alice.messages.bob.clientadded");
        assert_eq!(copies[0].body["status"], 100);
        assert_eq!(copies[1].routing_key, "apps.app.users.bob.messages.alice.clientadded");
        assert_eq!(copies[1].body["status"], 150);
        assert_eq!(copies[1].body["text"], "hi");
    }

    #[test]
    fn group_message_reaches_timeline_members_and_sender_once() {
        let m = message("g1", json!({"channel_type":"group"}));
        let copies = group_copies(&m, ["bob", "alice", "carol", "bob", "g1"]).unwrap();
        let keys: Vec<_> = copies.iter().map(|c| (c.inbox_of.as_str(), c.body["status"].as_i64().unwrap())).collect();
        assert_eq!(keys, vec![("g1", 100), ("bob", 150), ("alice", 150), ("carol", 150)]);
        assert!(copies.iter().all(|c| c.routing_key.ends_with(".messages.g1.clientadded")));
    }

    #[test]
    fn members_share_one_serialised_body() {
        let m = message("g1", json!({"channel_type":"group","text":"hi"}));
        let copies = group_copies(&m, ["bob", "carol"]).unwrap();
        assert!(copies[1].body.shares(&copies[2].body) && copies[2].body.shares(&copies[3].body));
        assert!(!copies[0].body.shares(&copies[1].body));
    }

    #[test]
    fn hidden_for_skips_only_that_member() {
        let m = message("g1", json!({"channel_type":"group","attributes":{"hiddenFor":"bob"}}));
        let copies = group_copies(&m, ["bob", "carol"]).unwrap();
        let inboxes: Vec<_> = copies.iter().map(|c| c.inbox_of.as_str()).collect();
        assert_eq!(inboxes, vec!["g1", "carol", "alice"]);
    }

    #[test]
    fn a_key_that_cannot_fit_is_an_error() {
        let long = "g".repeat(120);
        let m = message(&long, json!({"channel_type":"group"}));
        assert_eq!(group_copies(&m, ["bob"]).unwrap_err().code(), "id-too-long");
        let receipt =
            read_receipt_copy("app", "bob", &"c".repeat(220), "m1", json!({"status":200}).as_object().unwrap());
        assert_eq!(receipt.unwrap_err().code(), "id-too-long");
    }

    #[test]
    fn failed_copy_goes_to_the_sender_with_the_reason() {
        let copy = failed_copy(&message("bob", json!({"attributes":{"x":1}})), "blocklist", "blocked", "no").unwrap();
        assert_eq!(copy.routing_key, "apps.app.users.alice.messages.bob.clientadded");
        assert_eq!(copy.body["status"], -100);
        assert_eq!(copy.body["attributes"]["x"], 1);
        assert_eq!(copy.body["attributes"]["rejection"], json!({"plugin":"blocklist","code":"blocked","reason":"no"}));
    }

    #[test]
    fn read_receipt_only_for_received() {
        let ok = read_receipt_copy("app", "bob", "alice", "m1", json!({"status":200}).as_object().unwrap());
        let ok = ok.unwrap().unwrap();
        assert_eq!(ok.routing_key, "apps.app.users.alice.messages.bob.m1.clientupdated");
        assert_eq!(*ok.body, json!({"timelineOf":"alice","message_id":"m1","status":250}));
        let other = read_receipt_copy("app", "bob", "alice", "m1", json!({"status":300}).as_object().unwrap());
        assert!(other.unwrap().is_none());
    }

    #[test]
    fn conversation_update_and_archive() {
        let patch = json!({"is_new":false}).as_object().unwrap().clone();
        let up = conversation_update_copy("app", "bob", "alice", patch).unwrap();
        assert_eq!(up.routing_key, "apps.app.users.bob.conversations.alice.clientupdated");
        assert_eq!(*up.body, json!({"is_new":false,"timelineOf":"bob","conversWith":"alice"}));
        let stored = json!({"text":"hi","sender":"alice","timestamp":5,"is_new":true,"archived":false});
        let arc = archive_copies("app", "bob", "alice", stored.as_object().cloned().unwrap()).unwrap();
        assert_eq!(arc[0].routing_key, "apps.app.users.bob.conversations.alice.clientdeleted");
        assert!(arc[0].body.shares(&arc[1].body));
        assert_eq!(*arc[0].body, json!({"text":"hi","sender":"alice","timestamp":5,"is_new":true,"archived":true}));
        assert_eq!(arc[1].routing_key, "apps.app.users.bob.archived_conversations.alice.clientadded");
        assert_eq!(arc[1].body["archived"], true);
    }

    #[test]
    fn group_update_fans_out_to_notify_to() {
        let copies = |body: Value| {
            let update = GroupUpdate::parse("app", body.as_object().unwrap(), 10)?;
            group_update_copies("app", &update)
        };
        let copies = copies(json!({"group":{"uid":"g1","name":"G"},"notify_to":{"u1":1,"u2":1}})).unwrap();
        assert_eq!(copies.len(), 2);
        assert_eq!(copies[0].routing_key, "apps.app.users.u1.groups.g1.clientupdated");
        assert_eq!(copies[0].body["name"], "G");
        let code = |body: Value| GroupUpdate::parse("app", body.as_object().unwrap(), 10).unwrap_err().code();
        assert_eq!(code(json!({"group":{"uid":"g.1"},"notify_to":{}})), "invalid-id");
        assert_eq!(code(json!({"notify_to":{}})), "bad-field");
        assert_eq!(code(json!({"group":{"uid":"g1","members":[]},"notify_to":{}})), "bad-field");
        // The timeline key holds the id twice; a member's and a notified user's hold it once.
        assert_eq!(code(json!({"group":{"uid":"g".repeat(110)},"notify_to":{}})), "id-too-long");
        assert_eq!(code(json!({"group":{"uid":"g1","members":{"m".repeat(220):1}},"notify_to":{}})), "id-too-long");
        assert_eq!(code(json!({"group":{"uid":"g1"},"notify_to":{"u".repeat(220):1}})), "id-too-long");
    }
}
