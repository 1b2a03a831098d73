//! The read-only history API on the operator HTTP server, shaped like chat21-http-server:
//! a user's conversations and messages, groups for their members; user JWTs as the broker takes.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::store::Store;
use crate::token::{AuthConfig, Refused, Verifier};

/// Messages or conversations per page unless `limit` says otherwise.
const DEFAULT_PAGE: i64 = 100;
/// The most a page holds whatever `limit` asks (chat21-http-server answers at most 200 too);
/// a larger `limit` is clamped, so one request costs a bounded query and answer.
pub const MAX_PAGE: i64 = 200;

#[derive(Clone)]
struct History {
    store: Store,
    app: String,
    verifier: Verifier,
}

/// The history routes under `/api`, or `None` when there is no signing secret to check tokens.
pub fn routes(store: Store, app: &str, auth: &AuthConfig) -> Option<Router> {
    if auth.secret.is_empty() {
        return None;
    }
    let verifier = Verifier::new(&auth.secret, &auth.resource_server_id);
    let history = History { store, app: app.to_owned(), verifier };
    Some(
        Router::new()
            .route("/api/{app}/{user}/conversations", get(conversations))
            .route("/api/{app}/{user}/archived_conversations", get(archived_conversations))
            .route("/api/{app}/{user}/conversations/{conversation}/messages", get(messages))
            .route("/api/{app}/groups/{group}", get(group))
            .with_state(history),
    )
}

/// Why a request gets no data.
enum Refusal {
    Unauthorized(String),
    Forbidden,
    NotFound,
    Failed(anyhow::Error),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Refusal::Unauthorized(why) => (StatusCode::UNAUTHORIZED, why),
            Refusal::Forbidden => (StatusCode::FORBIDDEN, "this token is for another user or app".to_owned()),
            Refusal::NotFound => (StatusCode::NOT_FOUND, "not found".to_owned()),
            Refusal::Failed(err) => {
                tracing::warn!(error = format!("{err:#}"), "history query failed");
                (StatusCode::SERVICE_UNAVAILABLE, "the store is not available".to_owned())
            }
        };
        (status, Json(json!({"success": false, "err": message}))).into_response()
    }
}

impl From<anyhow::Error> for Refusal {
    fn from(err: anyhow::Error) -> Self {
        Refusal::Failed(err)
    }
}

impl History {
    /// The user the bearer token (`Authorization: JWT <t>` as chat21 clients send it, or
    /// `Bearer <t>`) was issued to, if it is valid (see [`Verifier`]) and for `app`.
    fn user(&self, headers: &HeaderMap, app: &str) -> Result<String, Refusal> {
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Refusal::Unauthorized("missing Authorization header".into()))?;
        let token = value
            .strip_prefix("JWT ")
            .or_else(|| value.strip_prefix("Bearer "))
            .ok_or_else(|| Refusal::Unauthorized("Authorization must be `JWT <token>` or `Bearer <token>`".into()))?;
        // The token is checked first, so an unauthenticated caller learns nothing of the app.
        let user = match self.verifier.user(token.trim(), &self.app) {
            Ok(user) => Some(user),
            Err(Refused::OtherApp) => None,
            Err(refused) => return Err(Refusal::Unauthorized(refused.to_string())),
        };
        if app != self.app {
            return Err(Refusal::NotFound);
        }
        user.ok_or(Refusal::Forbidden)
    }

    /// Checks that the token is `user`'s own.
    fn owner(&self, headers: &HeaderMap, app: &str, user: &str) -> Result<(), Refusal> {
        if self.user(headers, app)? == user { Ok(()) } else { Err(Refusal::Forbidden) }
    }
}

#[derive(Deserialize)]
struct Page {
    limit: Option<i64>,
    /// Only messages sent before this time (ms), for the next page.
    before: Option<i64>,
}

fn page_size(page: &Page) -> i64 {
    page.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

fn ok(result: impl Into<Value>) -> Json<Value> {
    Json(json!({"success": true, "result": result.into()}))
}

async fn conversations(
    State(history): State<History>,
    Path((app, user)): Path<(String, String)>,
    Query(page): Query<Page>,
    headers: HeaderMap,
) -> Result<Json<Value>, Refusal> {
    history.owner(&headers, &app, &user)?;
    Ok(ok(history.store.conversations(&app, &user, false, page_size(&page)).await?))
}

async fn archived_conversations(
    State(history): State<History>,
    Path((app, user)): Path<(String, String)>,
    Query(page): Query<Page>,
    headers: HeaderMap,
) -> Result<Json<Value>, Refusal> {
    history.owner(&headers, &app, &user)?;
    Ok(ok(history.store.conversations(&app, &user, true, page_size(&page)).await?))
}

async fn messages(
    State(history): State<History>,
    Path((app, user, conversation)): Path<(String, String, String)>,
    Query(page): Query<Page>,
    headers: HeaderMap,
) -> Result<Json<Value>, Refusal> {
    history.owner(&headers, &app, &user)?;
    Ok(ok(history.store.messages(&app, &user, &conversation, page.before, page_size(&page)).await?))
}

async fn group(
    State(history): State<History>,
    Path((app, group)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, Refusal> {
    let user = history.user(&headers, &app)?;
    match history.store.group(&app, &group).await? {
        Some(group) if group.is_member(&user) => Ok(ok(group.body)),
        // Not telling outsiders whether the group exists.
        _ => Err(Refusal::NotFound),
    }
}
