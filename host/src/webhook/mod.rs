//! Webhooks: chat21's events, with chat21's payloads, POSTed to the configured endpoints
//! through a durable outbox in the store (retried with backoff, signed, dead-lettered).
//!
//! # Layout
//! - this file: which events a routed delivery causes, as outbox rows (pure, unit-tested).
//! - [`deliver`]: the delivery task: per-endpoint concurrency, retries, dead letters.
//! - [`sign`]: the `X-Inboxd-Signature` HMAC.
//! - [`endpoint`]: how an endpoint URL is shown (its path is a secret).

mod config;
pub mod deliver;
pub mod endpoint;
pub mod sign;

pub use config::{Chat21Webhook, RawWebhook, WebhookConfig, announce, chat21_env, validate};

use std::sync::Arc;

use serde_json::{Value, json};

use crate::chat21::{Status, Topic};
use crate::routing::{Event, Routed};
use crate::store::Write;

/// The chat21 event names inboxd sends.
pub const EVENTS: [&str; 5] =
    ["message-sent", "message-delivered", "message-return-receipt", "conversation-archived", "presence-change"];

/// The names chat21-server declares but never emits (nor does inboxd), with why: accepted in
/// `events` so that a chat21 configuration starts as is, and named once at start.
pub const NEVER_EMITTED: [(&str, &str); 2] = [
    (
        "message-received",
        "chat21-server declares it but never emits it either (a read receipt is message-return-receipt)",
    ),
    (
        "conversation-unarchived",
        "chat21-server declares it but never emits it either, and inboxd has no unarchive event",
    ),
];

/// Whether `name` is an event name `events` accepts: one inboxd sends or one of [`NEVER_EMITTED`].
pub fn known_event(name: &str) -> bool {
    EVENTS.contains(&name) || NEVER_EMITTED.iter().any(|(n, _)| *n == name)
}

/// A short stable key of an endpoint URL for outbox ids (the URL's path may be a secret).
fn endpoint_key(endpoint: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(endpoint.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Which events go where.
#[derive(Debug, Clone)]
pub struct Webhooks {
    app: String,
    endpoints: Vec<String>,
    events: Vec<&'static str>,
}

impl Webhooks {
    /// The webhooks of `config` for app `app`; `None` when disabled or without endpoints.
    pub fn new(config: &WebhookConfig, app: &str) -> Option<Webhooks> {
        if !config.enabled || config.endpoints.is_empty() {
            return None;
        }
        let listed = |e: &str| config.events.is_empty() || config.events.iter().any(|c| c == e);
        // chat21-server's list gates only the message events; it always sends archives, and
        // presence changes only with PRESENCE_ENABLED.
        let events = EVENTS.into_iter().filter(|e| match (&config.chat21, *e) {
            (Some(chat21), "presence-change") => chat21.presence,
            (Some(_), "conversation-archived") => true,
            _ => listed(e),
        });
        Some(Webhooks { app: app.to_owned(), endpoints: config.endpoints.clone(), events: events.collect() })
    }

    /// One outbox row per event of `routed` and endpoint, stamped `now` (ms); an event's rows
    /// share its JSON.
    pub fn writes_for(&self, routed: &Routed, now: i64) -> Vec<Write> {
        let mut writes = Vec::new();
        for event in self.events_for(routed, now) {
            // A message's event is keyed by the message's id (and the inbox it was delivered to),
            // so the event of a redelivery is the row already there: it is sent once.
            let message = match (&routed.event, event.delivered_to) {
                (Event::Message { message_id }, Some(inbox)) => Some((message_id, inbox)),
                _ => None,
            };
            for endpoint in &self.endpoints {
                let id = match message {
                    Some((message_id, inbox)) => {
                        format!("{message_id}/{}/{inbox}/{}", event.event_type, endpoint_key(endpoint))
                    }
                    None => uuid::Uuid::now_v7().to_string(),
                };
                writes.push(Write::Webhook {
                    id,
                    endpoint: endpoint.clone(),
                    event_type: event.event_type.to_owned(),
                    body: Arc::clone(&event.body),
                    created_at: now,
                    message_id: message.map(|(message_id, _)| message_id.clone()),
                });
            }
        }
        writes
    }

    /// The events of `routed` this configuration sends, with chat21's payloads. A copy's body
    /// goes into `data` as the text it was serialised to once, not as a copy of its JSON.
    fn events_for<'a>(&self, routed: &'a Routed, now: i64) -> Vec<WebhookEvent<'a>> {
        let app = self.app.as_str();
        let wanted = |event_type: &str| self.events.contains(&event_type);
        match &routed.event {
            Event::Message { .. } => routed
                .copies
                .iter()
                .filter_map(|copy| {
                    let event_type = match copy.status {
                        Some(Status::Sent) => "message-sent",
                        Some(Status::Delivered) => "message-delivered",
                        _ => return None,
                    };
                    if !wanted(event_type) {
                        return None;
                    }
                    let envelope = json!({
                        "event_type": event_type,
                        "createdAt": now,
                        "recipient_id": copy.body.get("recipient"),
                        "app_id": app,
                        "message_id": copy.body.get("message_id"),
                        "extras": {"topic": copy.routing_key},
                        "delivered_to": copy.inbox_of,
                    });
                    let body = with_data(&envelope, &copy.body.text());
                    Some(WebhookEvent { event_type, body, delivered_to: Some(&copy.inbox_of) })
                })
                .collect(),
            Event::Receipt { .. } if wanted("message-return-receipt") => routed
                .copies
                .iter()
                .map(|copy| {
                    let envelope = json!({
                        "event_type": "message-return-receipt",
                        "createdAt": now,
                        "recipient_id": copy.body.get("timelineOf"),
                        "app_id": app,
                        "message_id": copy.body.get("message_id"),
                        "extras": {"topic": copy.routing_key},
                    });
                    let body = with_data(&envelope, &copy.body.text());
                    WebhookEvent { event_type: "message-return-receipt", body, delivered_to: None }
                })
                .collect(),
            Event::Archive { me, conversation } if wanted("conversation-archived") => {
                let topic = Topic::ConversationArchive { me: me.clone(), conversation: conversation.clone() };
                let payload = json!({
                    "event_type": "conversation-archived",
                    "createdAt": now,
                    "app_id": app,
                    "user_id": me,
                    "recipient_id": conversation,
                    "convers_with": conversation,
                    "data": {"timelineOf": me, "conversWith": conversation, "archived": true},
                    "extras": {"topic": topic.routing_key(app)},
                });
                vec![WebhookEvent {
                    event_type: "conversation-archived",
                    body: payload.to_string().into(),
                    delivered_to: None,
                }]
            }
            Event::Presence { user, online } if wanted("presence-change") => {
                let payload = json!({
                    "event_type": "presence-change",
                    "presence": if *online { "online" } else { "offline" },
                    "createdAt": now,
                    "app_id": app,
                    "user_id": user,
                    "data": true,
                });
                vec![WebhookEvent {
                    event_type: "presence-change",
                    body: payload.to_string().into(),
                    delivered_to: None,
                }]
            }
            _ => Vec::new(),
        }
    }
}

/// One event of a routed delivery: its name, its JSON and, for a message's copy, whose inbox.
struct WebhookEvent<'a> {
    event_type: &'static str,
    body: Arc<str>,
    delivered_to: Option<&'a str>,
}

/// `envelope` (a JSON object with at least one member) serialised with `"data": data` added as
/// its last member, `data` being JSON text already.
fn with_data(envelope: &Value, data: &str) -> Arc<str> {
    let mut text = envelope.to_string();
    text.pop();
    text.reserve(data.len() + 9);
    text.push_str(",\"data\":");
    text.push_str(data);
    text.push('}');
    text.into()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::chat21::{Inbound, Limits};
    use crate::policy::{AcceptAll, PolicyHandle};
    use crate::routing::{Router, Stamp};

    fn config(events: &[&str]) -> WebhookConfig {
        WebhookConfig {
            enabled: true,
            endpoints: vec!["http://a/hook".into(), "http://b/hook".into()],
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            secret: String::new(),
            max_attempts: 3,
            concurrency: 1,
            timeout: Duration::from_secs(1),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(1),
            retry_client_errors: false,
            extra_roots: Vec::new(),
            chat21: None,
        }
    }

    fn payloads(events: &[&str], key: &str, body: Value) -> Vec<Value> {
        payloads_of(&config(events), key, body)
    }

    fn payloads_of(config: &WebhookConfig, key: &str, body: Value) -> Vec<Value> {
        let inbound = Inbound::parse(
            "app",
            key,
            body.to_string().as_bytes(),
            Limits { max_body_bytes: 4096, max_inline_members: 100 },
        )
        .unwrap();
        let stamp = Stamp { message_id: "m-1".into(), now_ms: 1 };
        let routed = Router::new("app", PolicyHandle::new(Arc::new(AcceptAll))).route(inbound, stamp).unwrap();
        let writes = Webhooks::new(config, "app").unwrap().writes_for(&routed, 42);
        writes
            .iter()
            .filter_map(|w| match w {
                Write::Webhook { endpoint, body, .. } if endpoint == "http://a/hook" => serde_json::from_str(body).ok(),
                _ => None,
            })
            .collect()
    }

    /// A message's events are keyed by its id, inbox and endpoint: routed again (a redelivery,
    /// later), the same keys, so the outbox keeps the first rows.
    #[test]
    fn a_message_routed_again_has_the_same_outbox_keys() {
        let keys = |now| {
            let limits = Limits { max_body_bytes: 4096, max_inline_members: 100 };
            let key = "apps.app.outgoing.users.alice.messages.bob.outgoing";
            let inbound = Inbound::parse("app", key, b"{\"text\":\"hi\"}", limits).unwrap();
            let stamp = Stamp { message_id: "m-1".into(), now_ms: now };
            let routed = Router::new("app", PolicyHandle::new(Arc::new(AcceptAll))).route(inbound, stamp).unwrap();
            let writes = Webhooks::new(&config(&[]), "app").unwrap().writes_for(&routed, now);
            writes
                .into_iter()
                .filter_map(|w| match w {
                    Write::Webhook { id, message_id, .. } => Some((id, message_id)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let first = keys(1);
        assert_eq!(first.len(), 4, "two events, two endpoints");
        assert_eq!(first, keys(99));
        assert!(first.iter().all(|(id, message_id)| id.starts_with("m-1/") && message_id.as_deref() == Some("m-1")));
        let distinct: std::collections::HashSet<_> = first.iter().map(|(id, _)| id).collect();
        assert_eq!(distinct.len(), 4);
    }

    #[test]
    fn a_direct_message_is_sent_and_delivered() {
        let p = payloads(&[], "apps.app.outgoing.users.alice.messages.bob.outgoing", json!({"text":"hi"}));
        assert_eq!(p.len(), 2);
        assert_eq!(
            (&p[0]["event_type"], &p[0]["delivered_to"], &p[0]["createdAt"]),
            (&json!("message-sent"), &json!("alice"), &json!(42))
        );
        assert_eq!(p[1]["event_type"], "message-delivered");
        assert_eq!(p[1]["recipient_id"], "bob");
        assert_eq!(p[1]["data"]["text"], "hi");
        assert_eq!(p[1]["extras"]["topic"], "apps.app.users.bob.messages.alice.clientadded");
        assert_eq!(p[0]["message_id"], p[1]["message_id"]);
    }

    #[test]
    fn events_are_filtered_and_each_kind_has_its_shape() {
        let only = ["message-delivered"];
        let p = payloads(&only, "apps.app.outgoing.users.alice.messages.bob.outgoing", json!({}));
        assert_eq!(p.len(), 1);
        let p = payloads(&[], "apps.app.users.bob.messages.alice.m1.update", json!({"status":200}));
        assert_eq!((&p[0]["event_type"], &p[0]["data"]["status"]), (&json!("message-return-receipt"), &json!(250)));
        let p = payloads(&[], "apps.app.users.bob.conversations.alice.archive", json!({}));
        assert_eq!((&p[0]["user_id"], &p[0]["convers_with"]), (&json!("bob"), &json!("alice")));
        assert_eq!(p[0]["extras"]["topic"], "apps.app.users.bob.conversations.alice.archive");
        let p = payloads(&[], "apps.app.users.bob.presence.c1", json!({"disconnected":true}));
        assert_eq!((&p[0]["presence"], &p[0]["user_id"]), (&json!("offline"), &json!("bob")));
    }

    #[test]
    fn a_chat21_configuration_is_gated_as_chat21_server_gates_it() {
        let tiledesk = ["message-sent", "message-delivered", "conversation-unarchived"];
        let archive = "apps.app.users.bob.conversations.alice.archive";
        let presence = "apps.app.users.bob.presence.c1";
        let receipt = "apps.app.users.bob.messages.alice.m1.update";
        // inboxd's own list gates everything: presence and archives only when listed.
        for key in [archive, presence, receipt] {
            assert!(payloads(&tiledesk, key, json!({"status": 200})).is_empty(), "{key}");
        }
        // chat21's: archives always, presence with PRESENCE_ENABLED only, receipts by the list.
        let mut chat21 = config(&tiledesk);
        chat21.chat21 = Some(Chat21Webhook::default());
        assert_eq!(payloads_of(&chat21, archive, json!({}))[0]["event_type"], "conversation-archived");
        assert!(payloads_of(&chat21, presence, json!({})).is_empty());
        assert!(payloads_of(&chat21, receipt, json!({"status": 200})).is_empty());
        let direct = payloads_of(&chat21, "apps.app.outgoing.users.alice.messages.bob.outgoing", json!({}));
        assert_eq!(direct.len(), 2);
        chat21.chat21 = Some(Chat21Webhook { presence: true, ignored: vec![] });
        assert_eq!(payloads_of(&chat21, presence, json!({}))[0]["event_type"], "presence-change");
        // No list at all: every event but presence.
        chat21.events.clear();
        chat21.chat21 = Some(Chat21Webhook::default());
        assert_eq!(payloads_of(&chat21, receipt, json!({"status": 200})).len(), 1);
        assert!(payloads_of(&chat21, presence, json!({})).is_empty());
    }

    /// An event's rows for its endpoints share one JSON, whose `data` is the copy's body as it
    /// was published (spliced in as serialised, not re-serialised per copy).
    #[test]
    fn an_events_rows_share_its_json_and_data_is_the_published_copy() {
        let limits = Limits { max_body_bytes: 4096, max_inline_members: 100 };
        let key = "apps.app.outgoing.users.alice.messages.bob.outgoing";
        let inbound =
            Inbound::parse("app", key, br#"{"text":"hi \"there\"","attributes":{"a":[1,2]}}"#, limits).unwrap();
        let stamp = Stamp { message_id: "m-1".into(), now_ms: 1 };
        let routed = Router::new("app", PolicyHandle::new(Arc::new(AcceptAll))).route(inbound, stamp).unwrap();
        let writes = Webhooks::new(&config(&[]), "app").unwrap().writes_for(&routed, 42);
        let rows: Vec<(&str, &str, &Arc<str>)> = writes
            .iter()
            .filter_map(|w| match w {
                Write::Webhook { endpoint, event_type, body, .. } => {
                    Some((endpoint.as_str(), event_type.as_str(), body))
                }
                _ => None,
            })
            .collect();
        assert_eq!(rows.len(), 4, "two events, two endpoints");
        for (endpoint, event_type, body) in &rows {
            let other = rows.iter().find(|(e, t, _)| e != endpoint && t == event_type).unwrap();
            assert!(Arc::ptr_eq(body, other.2), "{event_type}: a copy of the JSON per endpoint");
            let copy =
                routed.copies.iter().find(|c| body.contains(&format!("\"delivered_to\":\"{}\"", c.inbox_of))).unwrap();
            let parsed: Value = serde_json::from_str(body).unwrap();
            assert_eq!(parsed["data"], *copy.body, "{event_type}");
            assert_eq!(parsed["data"]["text"], "hi \"there\"");
            assert!(body.ends_with(&format!(",\"data\":{}}}", copy.body.text())), "{body}");
        }
    }
}
