//! chat21-http-server's push routes, kept for a push provider: inboxd has none (chat21's is
//! Firebase Cloud Messaging), so it stores what it is given and says it sent nothing.

use axum::Json;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::{Call, Refusal, body_object, routable, success};
use crate::clock::now_ms;

/// `POST /api/<app>/<user>/instances/<instance>` `{device_model, language, platform,
/// platform_version}`: the caller registers one of its own app instances (a device to push to).
pub(super) async fn instance(
    api: Call,
    Path((app, user, instance)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, Refusal> {
    let caller = api.caller(&app)?;
    if caller.user != user {
        return Ok((StatusCode::UNAUTHORIZED, "Unauthorized.").into_response());
    }
    let instance = routable("instance_id", &Value::from(instance))?;
    let body = body_object(&body);
    // chat21's instance document.
    let mut description = Map::new();
    for (field, value) in [("app_id", &app), ("user_id", &user), ("instance_id", &instance)] {
        description.insert(field.into(), value.as_str().into());
    }
    for field in ["device_model", "language", "platform", "platform_version"] {
        description.insert(field.into(), body.get(field).cloned().unwrap_or(Value::Null));
    }
    let text = Value::Object(description).to_string();
    api.store.save_instance(&app, &user, &instance, &text, now_ms()).await?;
    Ok(success().into_response())
}

/// `POST /api/<app>/notify` (admin only): a push request for a delivered message, kept by its
/// message id. The answer says no push was sent (`"push": "no provider"`).
pub(super) async fn notify(api: Call, Path(app): Path<String>, body: Bytes) -> Result<Response, Refusal> {
    let caller = api.caller(&app)?;
    if !caller.admin {
        let answer = json!({"success": false, "msg": "Unauthorized."});
        return Ok((StatusCode::FORBIDDEN, Json(answer)).into_response());
    }
    let request = body_object(&body);
    let id = request
        .get("message_id")
        .or_else(|| request.get("data").and_then(|data| data.get("message_id")))
        .and_then(Value::as_str)
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    api.store.save_push_request(&app, &id, &Value::Object(request).to_string(), now_ms()).await?;
    Ok(Json(json!({"success": true, "push": "no provider"})).into_response())
}
