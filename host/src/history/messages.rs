//! `POST /api/<app>/messages` and `/messages/sync`: a message sent through the API is
//! published on its sender's outgoing key, exactly the body chat21-http-server's `sendMessage`
//! builds, so it takes the pipeline of an MQTT client's message (policy chain, store, webhooks,
//! at-least-once). The answer waits for the broker's confirm.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::Path;
use serde_json::{Map, Value, json};

use super::{Call, Refusal, body_object, routable, success, truthy};
use crate::token::Caller;

/// How long `/messages/sync` waits for the message to reach the caller's inbox.
const SYNC_WAIT: Duration = Duration::from_secs(5);

/// Sends a message; `{success: true}` once the broker confirmed it.
pub(super) async fn send(api: Call, Path(app): Path<String>, body: Bytes) -> Result<Json<Value>, Refusal> {
    let caller = api.caller(&app)?;
    let (key, message) = outgoing(&app, &caller, &body_object(&body))?;
    api.outbound.publish(&[(key, message)]).await.map_err(Refusal::Unpublished)?;
    Ok(success())
}

/// Sends a message and answers `{success: true, message}` with the first message that reaches
/// the caller's inbox afterwards (chat21 connects an MQTT client as the caller to see it), or
/// `{success: true}` alone when none comes within [`SYNC_WAIT`].
pub(super) async fn send_sync(api: Call, Path(app): Path<String>, body: Bytes) -> Result<Json<Value>, Refusal> {
    let caller = api.caller(&app)?;
    let (key, message) = outgoing(&app, &caller, &body_object(&body))?;
    let inbox = routable("user", &Value::from(caller.user.as_str()))?;
    let watched = format!("apps.{app}.users.{inbox}.messages.*.clientadded");
    let received =
        api.outbound.publish_and_receive(&[(key, message)], &watched, SYNC_WAIT).await.map_err(Refusal::Unpublished)?;
    Ok(Json(match received {
        Some(message) => json!({"success": true, "message": message}),
        None => json!({"success": true}),
    }))
}

/// The routing key and body chat21's `sendMessage` publishes for `body`: the sender is the
/// caller, or `sender_id` when the caller is the app's admin.
///
/// # Errors
/// chat21's 405 when `sender_fullname`, `recipient_id` or `recipient_fullname` is missing, and
/// when an id cannot be routed.
fn outgoing(app: &str, caller: &Caller, body: &Map<String, Value>) -> Result<(String, Value), Refusal> {
    let mandatory = |field, text: &str| truthy(body, field).ok_or_else(|| Refusal::Invalid(text.to_owned()));
    let sender_fullname = mandatory("sender_fullname", "Sender Fullname is mandatory")?;
    let recipient = mandatory("recipient_id", "Recipient id is mandatory")?;
    let recipient_fullname = mandatory("recipient_fullname", "Recipient Fullname is mandatory")?;
    let sender = match truthy(body, "sender_id").filter(|_| caller.admin) {
        Some(sender) => routable("sender_id", sender)?,
        None => routable("user", &Value::from(caller.user.as_str()))?,
    };
    let recipient = routable("recipient_id", recipient)?;
    let channel_type = truthy(body, "channel_type").cloned().unwrap_or_else(|| "direct".into());
    let mut message = json!({
        "recipient_fullname": recipient_fullname,
        "sender_fullname": sender_fullname,
        "channel_type": channel_type,
    });
    // JSON.stringify leaves out what the body did not have; `if (x)` what is falsy.
    for field in ["text", "type"] {
        if let Some(value) = body.get(field) {
            message[field] = value.clone();
        }
    }
    for field in ["attributes", "metadata", "timestamp"] {
        if let Some(value) = truthy(body, field) {
            message[field] = value.clone();
        }
    }
    Ok((format!("apps.{app}.outgoing.users.{sender}.messages.{recipient}.outgoing"), message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(admin: bool) -> Caller {
        Caller { user: "bot".into(), admin }
    }

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    fn invalid(result: Result<(String, Value), Refusal>) -> String {
        match result {
            Err(Refusal::Invalid(text)) => text,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_body_is_chat21s_outgoing_message() {
        let sent = body(json!({
            "sender_fullname": "Bot", "recipient_id": "g1", "recipient_fullname": "G", "text": "hi",
            "type": "text", "channel_type": "group", "attributes": {"a": 1}, "metadata": "", "sender": "x",
            "group": {"members": {"m": 1}},
        }));
        let (key, message) = outgoing("app", &caller(false), &sent).unwrap();
        assert_eq!(key, "apps.app.outgoing.users.bot.messages.g1.outgoing");
        assert_eq!(
            message,
            json!({"text":"hi","type":"text","recipient_fullname":"G","sender_fullname":"Bot",
                   "channel_type":"group","attributes":{"a":1}})
        );
    }

    #[test]
    fn only_admins_send_as_someone_else() {
        let sent =
            body(json!({"sender_fullname":"S","recipient_id":"bob","recipient_fullname":"B","sender_id":"alice"}));
        assert_eq!(
            outgoing("app", &caller(false), &sent).unwrap().0,
            "apps.app.outgoing.users.bot.messages.bob.outgoing"
        );
        let (key, message) = outgoing("app", &caller(true), &sent).unwrap();
        assert_eq!(key, "apps.app.outgoing.users.alice.messages.bob.outgoing");
        assert_eq!(message["channel_type"], "direct");
    }

    #[test]
    fn mandatory_fields_and_unroutable_ids_get_chat21s_405() {
        assert_eq!(invalid(outgoing("app", &caller(false), &body(json!({})))), "Sender Fullname is mandatory");
        let no_name = body(json!({"sender_fullname":"S","recipient_id":"bob"}));
        assert_eq!(invalid(outgoing("app", &caller(false), &no_name)), "Recipient Fullname is mandatory");
        let wildcard = body(json!({"sender_fullname":"S","recipient_id":"#","recipient_fullname":"R"}));
        assert!(invalid(outgoing("app", &caller(false), &wildcard)).contains("recipient_id"));
    }
}
