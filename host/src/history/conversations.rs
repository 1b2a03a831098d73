//! Conversation writes of chat21-http-server: archiving one (published on the user's `archive`
//! key as chat21 does, so the pipeline stores it, publishes the stored conversation and fires
//! the webhook), and deleting a group's conversations or messages from every timeline.

use axum::Json;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{Api, Call, Refusal, body_object, routable, success, truthy};
use crate::token::Caller;

/// `DELETE /api/<app>/conversations/<recipient>`: archives the caller's conversation (an admin
/// may name another `user_id` in the body); `201 {success: true}` once the broker confirmed.
pub(super) async fn archive(
    api: Call,
    Path((app, recipient)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Refusal> {
    let caller = api.caller(&app)?;
    let body = body_object(&body);
    let user = match truthy(&body, "user_id").filter(|_| caller.admin) {
        Some(user) => routable("user_id", user)?,
        None => routable("user", &Value::from(caller.user.as_str()))?,
    };
    let recipient = routable("recipient_id", &Value::from(recipient))?;
    let key = format!("apps.{app}.users.{user}.conversations.{recipient}.archive");
    api.outbound.publish(&[(key, json!({"action": "archive"}))]).await.map_err(Refusal::Unpublished)?;
    Ok((StatusCode::CREATED, Json(json!({"success": true}))))
}

/// `DELETE /api/<app>/<group>/conversations/timelines`: every user's conversation with the group.
pub(super) async fn delete_conversations(
    api: Call,
    Path((app, group)): Path<(String, String)>,
) -> Result<Json<Value>, Refusal> {
    let caller = api.caller(&app)?;
    api.may_purge(&app, &group, &caller).await?;
    api.store.delete_conversations_with(&app, &group).await?;
    Ok(success())
}

/// `DELETE /api/<app>/<group>/messages/timelines`: every copy of the group's messages.
pub(super) async fn delete_messages(
    api: Call,
    Path((app, group)): Path<(String, String)>,
) -> Result<Json<Value>, Refusal> {
    let caller = api.caller(&app)?;
    api.may_purge(&app, &group, &caller).await?;
    api.store.delete_messages_with(&app, &group).await?;
    Ok(success())
}

impl Api {
    /// Only the app's admin or the stored group's owner deletes a conversation everywhere
    /// (chat21 lets any valid token do it).
    async fn may_purge(&self, app: &str, group: &str, caller: &Caller) -> Result<(), Refusal> {
        if caller.admin {
            return Ok(());
        }
        match self.store.group(app, group).await? {
            Some(stored) if stored.owner.as_deref() == Some(caller.user.as_str()) => Ok(()),
            _ => Err(Refusal::Forbidden),
        }
    }
}
