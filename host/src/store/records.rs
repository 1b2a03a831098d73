//! What a routing plan writes to the store, derived from the very copies that were published,
//! so that a user's stored history is what their clients received. Pure, unit-tested.

use serde_json::{Map, Value};

use crate::chat21::{EventKind, InputError, Status, check_id};
use crate::clock::now_ms;
use crate::pipeline::Plan;

/// One idempotent upsert; replaying a batch leaves the store as one application did.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// An inbox copy of a message: a timeline entry, and the inbox's conversation unless the
    /// message says `attributes.updateconversation = false` or it is a FAILED copy.
    Message {
        inbox: String,
        conversation: String,
        message_id: String,
        status: i64,
        /// When inboxd handled the message (ms, server clock): the history's order and the
        /// conversation's `updated_at`. The client's `timestamp` stays in `body`, for display only.
        sent_at: i64,
        body: String,
        /// `Some(is_new)` when the conversation list is touched.
        conversation_update: Option<bool>,
    },
    /// A status change of one timeline entry (read receipts); it only ever rises.
    Status { inbox: String, conversation: String, message_id: String, status: i64 },
    /// A user's flags on one conversation (`is_new` from updates, `archived` from archives).
    Conversation { inbox: String, conversation: String, is_new: Option<bool>, archived: Option<bool> },
    /// A group as announced on `groups.update`.
    Group(StoredGroup),
    /// A webhook event for one endpoint, into the outbox (`id` makes a replayed batch harmless).
    Webhook { id: String, endpoint: String, event_type: String, body: String, created_at: i64 },
}

/// A stored group: id, name, owner, members and the whole JSON the server side sent.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredGroup {
    pub id: String,
    pub name: Option<String>,
    pub owner: Option<String>,
    pub members: Vec<String>,
    /// The `group` object of the update (with `uid`, `members`, `attributes`, …).
    pub body: Value,
}

impl StoredGroup {
    /// The group of a `groups.update` body `{group: {uid, name, owner, members: {uid: 1}}, notify_to}`.
    ///
    /// # Errors
    /// [`InputError::BadField`] when `group`, `group.uid` or `group.members` is unusable,
    /// [`InputError::InvalidId`] when an id cannot be routed.
    pub fn from_update(body: &Map<String, Value>) -> Result<StoredGroup, InputError> {
        let group = body
            .get("group")
            .filter(|g| g.is_object())
            .ok_or(InputError::BadField { field: "group", expected: "an object" })?;
        let id = group
            .get("uid")
            .and_then(Value::as_str)
            .ok_or(InputError::BadField { field: "group.uid", expected: "a string" })?;
        check_id("group", id)?;
        let members = match group.get("members") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(members)) => {
                members.keys().map(|m| check_id("member", m).map(|()| m.clone())).collect::<Result<Vec<_>, _>>()?
            }
            Some(_) => return Err(InputError::BadField { field: "group.members", expected: "an object" }),
        };
        let text = |key: &str| group.get(key).and_then(Value::as_str).map(str::to_owned);
        Ok(StoredGroup { id: id.to_owned(), name: text("name"), owner: text("owner"), members, body: group.clone() })
    }

    pub fn is_member(&self, user: &str) -> bool {
        self.members.iter().any(|m| m == user)
    }
}

/// The store writes for `plan`, in the order they must be applied.
pub fn writes_for(plan: &Plan) -> Vec<Write> {
    let mut writes = Vec::new();
    match plan.kind {
        EventKind::Message => {
            let handled_at = received_at(plan.message_id.as_deref());
            for copy in &plan.copies {
                // apps.<app>.users.<inbox>.messages.<conversation>.clientadded
                let Some(conversation) = copy.routing_key.split('.').nth(5) else { continue };
                let Some(message_id) = copy.body.get("message_id").and_then(Value::as_str) else { continue };
                let status = copy.body.get("status").and_then(Value::as_i64).unwrap_or(0);
                let keeps_list = copy.body.pointer("/attributes/updateconversation") != Some(&Value::Bool(false));
                let conversation_update =
                    (keeps_list && status != Status::Failed.code()).then_some(status != Status::Sent.code());
                writes.push(Write::Message {
                    inbox: copy.inbox_of.clone(),
                    conversation: conversation.to_owned(),
                    message_id: message_id.to_owned(),
                    status,
                    sent_at: handled_at,
                    // The bytes the publisher sent, serialised once when the copy was built.
                    body: String::from_utf8_lossy(&copy.body.bytes()).into_owned(),
                    conversation_update,
                });
            }
        }
        EventKind::ReadReceipt => {
            for copy in &plan.copies {
                // apps.<app>.users.<sender>.messages.<reader>.<message_id>.clientupdated
                let words: Vec<&str> = copy.routing_key.split('.').collect();
                let (Some(reader), Some(message_id)) = (words.get(5), words.get(6)) else { continue };
                let status = |inbox: &str, conversation: &str, status: Status| Write::Status {
                    inbox: inbox.to_owned(),
                    conversation: conversation.to_owned(),
                    message_id: (*message_id).to_owned(),
                    status: status.code(),
                };
                writes.push(status(reader, &copy.inbox_of, Status::Received));
                writes.push(status(&copy.inbox_of, reader, Status::ReturnReceipt));
            }
        }
        EventKind::ConversationUpdate | EventKind::ConversationArchive => {
            let archive = plan.kind == EventKind::ConversationArchive;
            if let Some(copy) = plan.copies.first() {
                let text = |key| copy.body.get(key).and_then(Value::as_str).map(str::to_owned);
                let flag = |key| copy.body.get(key).and_then(Value::as_bool);
                let (is_new, archived) = if archive { (None, Some(true)) } else { (flag("is_new"), flag("archived")) };
                if let (Some(inbox), Some(conversation), true) =
                    (text("timelineOf"), text("conversWith"), is_new.is_some() || archived.is_some())
                {
                    writes.push(Write::Conversation { inbox, conversation, is_new, archived });
                }
            }
        }
        EventKind::GroupUpdate => writes.extend(plan.group.clone().map(Write::Group)),
        EventKind::Presence => {}
    }
    writes
}

/// When inboxd received message `id` (ms): the time its UUIDv7 id carries (inboxd made it then,
/// next to the `timestamp` it sets when the client sends none), else now; never later than now.
fn received_at(id: Option<&str>) -> i64 {
    let now = now_ms();
    let stamped = id.and_then(|id| uuid::Uuid::parse_str(id).ok()).and_then(|id| id.get_timestamp());
    stamped.map_or(now, |stamp| {
        let (secs, nanos) = stamp.to_unix();
        let ms = i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000) + i64::from(nanos / 1_000_000);
        ms.min(now)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::chat21::{Inbound, Limits};
    use crate::pipeline::Router;
    use crate::policy::{AcceptAll, PolicyHandle};

    fn writes(key: &str, body: Value) -> Vec<Write> {
        let inbound = Inbound::parse(
            "app",
            key,
            body.to_string().as_bytes(),
            Limits { max_body_bytes: 4096, max_inline_members: 100 },
        )
        .unwrap();
        let plan = Router::new("app", PolicyHandle::new(Arc::new(AcceptAll))).plan(inbound).unwrap();
        writes_for(&plan)
    }

    #[test]
    fn a_direct_message_writes_both_timelines_and_lists() {
        let before = now_ms();
        let w = writes("apps.app.outgoing.users.alice.messages.bob.outgoing", json!({"text":"hi","timestamp":7}));
        assert_eq!(w.len(), 2);
        let Write::Message { inbox, conversation, status, sent_at, conversation_update, body, .. } = &w[1] else {
            panic!("{w:?}")
        };
        assert_eq!((inbox.as_str(), conversation.as_str(), *status), ("bob", "alice", 150));
        // Dated by the server; the client's timestamp is only shown.
        assert!((before..=now_ms()).contains(sent_at), "{sent_at}");
        assert_eq!(*conversation_update, Some(true));
        let body = serde_json::from_str::<Value>(body).unwrap();
        assert_eq!((&body["status"], &body["timestamp"]), (&json!(150), &json!(7)));
        assert!(matches!(&w[0], Write::Message { inbox, conversation_update: Some(false), .. } if inbox == "alice"));
    }

    #[test]
    fn updateconversation_false_leaves_the_list_alone() {
        let body = json!({"text":"hi","attributes":{"updateconversation":false}});
        let w = writes("apps.app.outgoing.users.alice.messages.bob.outgoing", body);
        assert!(w.iter().all(|w| matches!(w, Write::Message { conversation_update: None, .. })));
    }

    #[test]
    fn a_read_receipt_marks_both_sides() {
        let w = writes("apps.app.users.bob.messages.alice.m1.update", json!({"status":200}));
        let status = |inbox: &str, conversation: &str, status| Write::Status {
            inbox: inbox.into(),
            conversation: conversation.into(),
            message_id: "m1".into(),
            status,
        };
        assert_eq!(w, vec![status("bob", "alice", 200), status("alice", "bob", 250)]);
    }

    #[test]
    fn updates_and_archives_set_flags() {
        let w = writes("apps.app.users.bob.conversations.alice.update", json!({"is_new":false}));
        let flags = |is_new, archived| Write::Conversation {
            inbox: "bob".into(),
            conversation: "alice".into(),
            is_new,
            archived,
        };
        assert_eq!(w, vec![flags(Some(false), None)]);
        assert!(writes("apps.app.users.bob.conversations.alice.update", json!({"x":1})).is_empty());
        let w = writes("apps.app.users.bob.conversations.alice.archive", json!({}));
        assert_eq!(w, vec![flags(None, Some(true))]);
    }

    #[test]
    fn a_group_update_is_stored() {
        let body =
            json!({"group":{"uid":"g1","name":"G","owner":"alice","members":{"alice":1,"bob":1}},"notify_to":{}});
        let w = writes("apps.observer.app.groups.update", body);
        let [Write::Group(group)] = w.as_slice() else { panic!("{w:?}") };
        assert_eq!(
            (group.id.as_str(), group.name.as_deref(), group.owner.as_deref()),
            ("g1", Some("G"), Some("alice"))
        );
        assert_eq!(group.members, vec!["alice", "bob"]);
        let bad = json!({"group":{"uid":"g1","members":["alice"]}});
        assert!(StoredGroup::from_update(bad.as_object().unwrap()).is_err());
    }
}
