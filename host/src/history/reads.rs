//! The read routes of chat21-http-server's API: a user's conversations (live and archived, list
//! and detail) and messages, and stored groups for their members.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde_json::Value;

use serde_json::json;

use super::{Api, Params, Refusal, ok};

pub(super) async fn conversations(
    State(history): State<Api>,
    Path((app, user)): Path<(String, String)>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Result<Json<Value>, Refusal> {
    history.reader(&headers, &params, &app, &user)?;
    Ok(ok(history.store.conversations(&app, &user, false, params.page_size()).await?))
}

pub(super) async fn archived_conversations(
    State(history): State<Api>,
    Path((app, user)): Path<(String, String)>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Result<Json<Value>, Refusal> {
    history.reader(&headers, &params, &app, &user)?;
    Ok(ok(history.store.conversations(&app, &user, true, params.page_size()).await?))
}

/// chat21's conversation detail: `result` is `[conversation]`, or `[]` when there is none.
async fn detail(
    history: &Api,
    (app, user, conversation): (String, String, String),
    params: &Params,
    headers: &HeaderMap,
    archived: bool,
) -> Result<Json<Value>, Refusal> {
    history.reader(headers, params, &app, &user)?;
    let found = history.store.conversation(&app, &user, &conversation, archived).await?;
    Ok(ok(found.into_iter().collect::<Vec<_>>()))
}

pub(super) async fn conversation(
    State(history): State<Api>,
    Path(path): Path<(String, String, String)>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Result<Json<Value>, Refusal> {
    detail(&history, path, &params, &headers, false).await
}

pub(super) async fn archived_conversation(
    State(history): State<Api>,
    Path(path): Path<(String, String, String)>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Result<Json<Value>, Refusal> {
    detail(&history, path, &params, &headers, true).await
}

pub(super) async fn messages(
    State(history): State<Api>,
    Path((app, user, conversation)): Path<(String, String, String)>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Result<Json<Value>, Refusal> {
    history.reader(&headers, &params, &app, &user)?;
    let page = history.store.messages(&app, &user, &conversation, params.before, params.page_size()).await?;
    Ok(ok(page))
}

pub(super) async fn group(
    State(history): State<Api>,
    Path((app, group)): Path<(String, String)>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Result<Json<Value>, Refusal> {
    let caller = history.caller(&headers, &params, &app)?;
    match history.store.group(&app, &group).await? {
        Some(group) if caller.admin || group.is_member(&caller.user) => Ok(ok(group.body)),
        // Not telling outsiders whether the group exists.
        _ => Err(Refusal::NotFound),
    }
}

/// The detail of a conversation named `timelines`: chat21 routes its GET to the detail.
pub(super) async fn timelines_detail(
    State(history): State<Api>,
    Path((app, user)): Path<(String, String)>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Result<Json<Value>, Refusal> {
    detail(&history, (app, user, "timelines".to_owned()), &params, &headers, false).await
}

/// chat21-http-server's version answer (what its clients check), for any caller of the app.
pub(super) async fn info(
    State(history): State<Api>,
    Path(app): Path<String>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Result<Json<Value>, Refusal> {
    history.caller(&headers, &params, &app)?;
    Ok(Json(json!({"v": CHAT21_VERSION})))
}

/// The chat21-http-server version whose API this is (its `getInfo` answer).
const CHAT21_VERSION: &str = "0.2.34.2";
