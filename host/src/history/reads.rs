//! The read routes of chat21-http-server's API: a user's conversations (live and archived, list
//! and detail) and messages, and stored groups for their members.

use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Call, Refusal, ok, token};

pub(super) async fn conversations(
    history: Call,
    Path((app, user)): Path<(String, String)>,
) -> Result<Json<Value>, Refusal> {
    history.reader(&app, &user)?;
    Ok(ok(history.store.conversations(&app, &user, false, history.params.page_size()).await?))
}

pub(super) async fn archived_conversations(
    history: Call,
    Path((app, user)): Path<(String, String)>,
) -> Result<Json<Value>, Refusal> {
    history.reader(&app, &user)?;
    Ok(ok(history.store.conversations(&app, &user, true, history.params.page_size()).await?))
}

/// chat21's conversation detail: `result` is `[conversation]`, or `[]` when there is none.
async fn detail(
    history: &Call,
    (app, user, conversation): (String, String, String),
    archived: bool,
) -> Result<Json<Value>, Refusal> {
    history.reader(&app, &user)?;
    let found = history.store.conversation(&app, &user, &conversation, archived).await?;
    Ok(ok(found.into_iter().collect::<Vec<_>>()))
}

pub(super) async fn conversation(
    history: Call,
    Path(path): Path<(String, String, String)>,
) -> Result<Json<Value>, Refusal> {
    detail(&history, path, false).await
}

pub(super) async fn archived_conversation(
    history: Call,
    Path(path): Path<(String, String, String)>,
) -> Result<Json<Value>, Refusal> {
    detail(&history, path, true).await
}

pub(super) async fn messages(
    history: Call,
    Path((app, user, conversation)): Path<(String, String, String)>,
) -> Result<Json<Value>, Refusal> {
    history.reader(&app, &user)?;
    let page =
        history.store.messages(&app, &user, &conversation, history.params.before, history.params.page_size()).await?;
    Ok(ok(page))
}

pub(super) async fn group(history: Call, Path((app, group)): Path<(String, String)>) -> Result<Json<Value>, Refusal> {
    let caller = history.caller(&app)?;
    match history.store.group(&app, &group).await? {
        Some(group) if caller.admin || group.is_member(&caller.user) => Ok(ok(group.body)),
        // Not telling outsiders whether the group exists.
        _ => Err(Refusal::NotFound),
    }
}

/// The detail of a conversation named `timelines`: chat21 routes its GET to the detail.
pub(super) async fn timelines_detail(
    history: Call,
    Path((app, user)): Path<(String, String)>,
) -> Result<Json<Value>, Refusal> {
    detail(&history, (app, user, "timelines".to_owned()), false).await
}

/// chat21-http-server's version answer (what its clients check), for any caller of the app.
pub(super) async fn info(history: Call, Path(app): Path<String>) -> Result<Json<Value>, Refusal> {
    history.caller(&app)?;
    Ok(Json(json!({"v": CHAT21_VERSION})))
}

/// chat21-http-server's `/verify` (outside `/api`, as there): the request's token's claims if it
/// is valid, else an empty `200`, as chat21 answers (it sends the `null` its decoder returned).
pub(super) async fn verify(history: Call) -> Response {
    let claims = token(&history.headers, &history.params).and_then(|token| history.verifier.claims(token).ok());
    match claims {
        Some(claims) => Json(claims).into_response(),
        None => StatusCode::OK.into_response(),
    }
}

/// The chat21-http-server version whose API this is (its `getInfo` answer).
const CHAT21_VERSION: &str = "0.2.34.2";
