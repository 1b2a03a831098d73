//! What a routed delivery writes to the store, derived from its event and the very copies that were published,
//! so that a user's stored history is what their clients received. Pure, unit-tested.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chat21::{Group, Status};
use crate::routing::{Event, Routed};

/// One idempotent upsert; replaying a batch leaves the store as one application did. The
/// history's kinds serialise (SQLite logs them before applying them, see `history_log`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
        /// The copy's JSON, shared with every copy (and row) of the same body.
        body: Arc<str>,
        /// `Some(is_new)` when the conversation list is touched.
        conversation_update: Option<bool>,
    },
    /// A status change of one timeline entry (read receipts); it only ever rises.
    Status { inbox: String, conversation: String, message_id: String, status: i64 },
    /// A user's flags on one conversation (`is_new` from updates, `archived` from archives).
    Conversation { inbox: String, conversation: String, is_new: Option<bool>, archived: Option<bool> },
    /// A group as announced on `groups.update`.
    #[serde(skip)]
    Group(Group),
    /// A webhook event for one endpoint, into the outbox (`id` makes a replayed batch harmless,
    /// and a message's event keyed by its `message_id` makes a redelivery's event the same row).
    #[serde(skip)]
    Webhook {
        id: String,
        endpoint: String,
        event_type: String,
        /// The event's JSON, shared by its rows for every endpoint.
        body: Arc<str>,
        created_at: i64,
        message_id: Option<String>,
    },
    /// The id a chat message was given, by its fingerprint (see `pipeline::Ledger`), committed
    /// before its copies are published; kept if it exists.
    #[serde(skip)]
    Intent { fingerprint: i64, message_id: String, created_at: i64 },
    /// The message's delivery is settled: its intent goes, and so do its delivered webhook events.
    #[serde(skip)]
    Settled { message_id: String },
}

/// The store writes for `routed`, in the order they must be applied; `now` (ms) dates a message
/// whose id carries no time.
pub fn writes_for(routed: &Routed, now: i64) -> Vec<Write> {
    let mut writes = Vec::new();
    match &routed.event {
        Event::Message { message_id } => {
            let handled_at = received_at(message_id, now);
            for copy in &routed.copies {
                let status = copy.status.map_or(0, Status::code);
                let keeps_list = copy.body.pointer("/attributes/updateconversation") != Some(&Value::Bool(false));
                // chat21's observer sets `is_new` on every copy it persists, the sender's too.
                let conversation_update = (keeps_list && copy.status != Some(Status::Failed)).then_some(true);
                writes.push(Write::Message {
                    inbox: copy.inbox_of.clone(),
                    conversation: copy.conversation.clone(),
                    message_id: message_id.clone(),
                    status,
                    sent_at: handled_at,
                    // The text the publisher sent, serialised once when the copy was built.
                    body: copy.body.text(),
                    conversation_update,
                });
            }
        }
        Event::Receipt { message_id } => {
            // The copy goes to the sender's inbox; its conversation is the reader.
            for copy in &routed.copies {
                let (reader, sender) = (&copy.conversation, &copy.inbox_of);
                let status = |inbox: &str, conversation: &str, status: Status| Write::Status {
                    inbox: inbox.to_owned(),
                    conversation: conversation.to_owned(),
                    message_id: message_id.clone(),
                    status: status.code(),
                };
                writes.push(status(reader, sender, Status::Received));
                writes.push(status(sender, reader, Status::ReturnReceipt));
            }
        }
        Event::ConversationUpdate { me, conversation, is_new, archived } => {
            if is_new.is_some() || archived.is_some() {
                writes.push(Write::Conversation {
                    inbox: me.clone(),
                    conversation: conversation.clone(),
                    is_new: *is_new,
                    archived: *archived,
                });
            }
        }
        Event::Archive { me, conversation } => writes.push(Write::Conversation {
            inbox: me.clone(),
            conversation: conversation.clone(),
            is_new: None,
            archived: Some(true),
        }),
        Event::GroupUpdate(group) => writes.push(Write::Group(group.clone())),
        Event::Presence { .. } => {}
    }
    writes
}

/// When inboxd received message `id` (ms): the time its UUIDv7 id carries (inboxd made it then,
/// next to the `timestamp` it sets when the client sends none), else `now`; never later than `now`.
pub fn received_at(id: &str, now: i64) -> i64 {
    let stamped = uuid::Uuid::parse_str(id).ok().and_then(|id| id.get_timestamp());
    stamped.map_or(now, |stamp| {
        let (secs, nanos) = stamp.to_unix();
        let ms = i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000) + i64::from(nanos / 1_000_000);
        ms.min(now)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::clock::now_ms;

    use super::*;
    use crate::chat21::{Inbound, Limits};
    use crate::policy::{AcceptAll, PolicyHandle};
    use crate::routing::{Router, Stamp};

    fn writes(key: &str, body: Value) -> Vec<Write> {
        let inbound = Inbound::parse(
            "app",
            key,
            body.to_string().as_bytes(),
            Limits { max_body_bytes: 4096, max_inline_members: 100 },
        )
        .unwrap();
        let stamp = Stamp { message_id: uuid::Uuid::now_v7().to_string(), now_ms: now_ms() };
        let routed = Router::new("app", PolicyHandle::new(Arc::new(AcceptAll))).route(inbound, stamp).unwrap();
        writes_for(&routed, now_ms())
    }

    fn writes_err(key: &str, body: Value) -> &'static str {
        let limits = Limits { max_body_bytes: 4096, max_inline_members: 100 };
        Inbound::parse("app", key, body.to_string().as_bytes(), limits).unwrap_err().code()
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
        assert!(matches!(&w[0], Write::Message { inbox, conversation_update: Some(true), .. } if inbox == "alice"));
    }

    /// The rows of a group message's copies hold the copies' shared text, not one copy each.
    #[test]
    fn a_group_messages_rows_share_the_published_bodies() {
        let members: serde_json::Map<String, Value> = (0..50).map(|i| (format!("m{i}"), json!(1))).collect();
        let body = json!({"text":"to all","channel_type":"group","group":{"members":members}});
        let w = writes("apps.app.outgoing.users.system.messages.group-g.outgoing", body);
        let bodies: Vec<&Arc<str>> = w
            .iter()
            .filter_map(|w| match w {
                Write::Message { body, .. } => Some(body),
                _ => None,
            })
            .collect();
        assert!(bodies.len() > 50, "{} rows", bodies.len());
        let mut distinct: Vec<&Arc<str>> = Vec::new();
        for body in &bodies {
            match distinct.iter().find(|d| d.as_ref() == body.as_ref()) {
                Some(same) => assert!(Arc::ptr_eq(same, body), "an equal body copied"),
                None => distinct.push(body),
            }
        }
        assert!(distinct.len() <= 3, "{} distinct bodies", distinct.len());
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
        let bad = json!({"group":{"uid":"g1","members":["alice"]},"notify_to":{}});
        assert_eq!(writes_err("apps.observer.app.groups.update", bad), "bad-field");
    }
}
