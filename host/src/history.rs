//! The read-only history API on the operator HTTP server, shaped like chat21-http-server so its
//! clients (chat21client.js in the web widget and the ionic app) read it unchanged: a user's
//! conversations (live and archived, list and detail) and messages, groups for their members;
//! chat21's tokens (bare in `Authorization` or in the query) and its refusal answer.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::store::Store;
use crate::telemetry;
use crate::token::{AuthConfig, Caller, Refused, Verifier};

/// The most a page holds whatever `limit` asks, and the page without one: chat21-http-server
/// answers its 200 newest. A larger `limit` is clamped, so one request costs a bounded query.
pub const MAX_PAGE: i64 = 200;

#[derive(Clone)]
struct History {
    store: Store,
    app: String,
    verifier: Verifier,
}

/// The history routes under `/api`, or `None` when there is no signing secret to check tokens.
/// `conversations/archived` is matched before `conversations/<c>`, as in chat21 (so a
/// conversation named `archived` has no detail route, there as here).
pub fn routes(store: Store, app: &str, auth: &AuthConfig) -> Option<Router> {
    if auth.secret.is_empty() {
        return None;
    }
    let verifier = Verifier::new(&auth.secret, &auth.resource_server_id);
    let history = History { store, app: app.to_owned(), verifier };
    Some(
        Router::new()
            .route("/api/{app}/{user}/conversations", get(conversations))
            .route("/api/{app}/{user}/conversations/archived", get(archived_conversations))
            .route("/api/{app}/{user}/conversations/{conversation}", get(conversation))
            .route("/api/{app}/{user}/archived_conversations", get(archived_conversations))
            .route("/api/{app}/{user}/archived_conversations/{conversation}", get(archived_conversation))
            .route("/api/{app}/{user}/conversations/{conversation}/messages", get(messages))
            .route("/api/{app}/groups/{group}", get(group))
            .with_state(history),
    )
}

/// Why a request gets no data.
#[derive(Debug)]
enum Refusal {
    /// No token, or not a valid one: chat21's `403 {"success":false,"msg":"Unauthorized."}`;
    /// the reason goes to the logs only.
    Unauthenticated {
        code: &'static str,
        why: String,
    },
    /// A valid token for another app, or another user's data without the admin role: 401, as
    /// chat21's `authorize()` answers.
    Forbidden,
    NotFound,
    Failed(anyhow::Error),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Refusal::Unauthenticated { code, why } => {
                telemetry::api_unauthenticated(code, &why);
                let answer = json!({"success": false, "msg": "Unauthorized."});
                return (StatusCode::FORBIDDEN, Json(answer)).into_response();
            }
            Refusal::Forbidden => (StatusCode::UNAUTHORIZED, "Permission denied".to_owned()),
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

/// The query string: paging (an inboxd extension) and the token, where chat21's SDK puts it.
#[derive(Deserialize)]
struct Params {
    limit: Option<i64>,
    /// Only messages sent before this time (ms), for the next page.
    before: Option<i64>,
    jwt: Option<String>,
    #[serde(rename = "JWT")]
    jwt_upper: Option<String>,
    token: Option<String>,
}

impl Params {
    fn page_size(&self) -> i64 {
        self.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE)
    }
}

/// The request's token, where chat21-http-server looks for it: the `Authorization` header
/// verbatim (chat21client.js sends the bare JWT), or after a `JWT `/`Bearer ` prefix; when the
/// header is absent or holds no JWT (`Basic …`), the query's `jwt`, `JWT`, then `token`.
fn token<'a>(headers: &'a HeaderMap, params: &'a Params) -> Option<&'a str> {
    let from_header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(|value| {
        let value = value.trim();
        ["JWT ", "Bearer "]
            .iter()
            .find_map(|prefix| {
                let head = value.get(..prefix.len())?;
                head.eq_ignore_ascii_case(prefix).then(|| value[prefix.len()..].trim_start())
            })
            .unwrap_or(value)
    });
    from_header
        .filter(|t| is_jwt(t))
        .or(params.jwt.as_deref())
        .or(params.jwt_upper.as_deref())
        .or(params.token.as_deref())
        .filter(|t| !t.is_empty())
}

/// Whether `text` has a compact JWT's shape: three base64url parts.
fn is_jwt(text: &str) -> bool {
    text.split('.').count() == 3 && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl History {
    /// Who the request's token (see [`token`]) speaks for, if it is valid (see [`Verifier`])
    /// and for `app`, the path's app.
    fn caller(&self, headers: &HeaderMap, params: &Params, app: &str) -> Result<Caller, Refusal> {
        let token = token(headers, params).ok_or_else(|| Refusal::Unauthenticated {
            code: "missing",
            why: "no token in Authorization, jwt, JWT or token".into(),
        })?;
        // The token is checked first, so an unauthenticated caller learns nothing of the app.
        let caller = match self.verifier.caller(token, &self.app) {
            Ok(caller) => Some(caller),
            Err(Refused::OtherApp) => None,
            Err(refused) => return Err(Refusal::Unauthenticated { code: refused.code(), why: refused.to_string() }),
        };
        if app != self.app {
            return Err(Refusal::NotFound);
        }
        caller.ok_or(Refusal::Forbidden)
    }

    /// Checks that the token may read `user`'s data: it is `user`'s own, or the app's admin.
    fn reader(&self, headers: &HeaderMap, params: &Params, app: &str, user: &str) -> Result<(), Refusal> {
        let caller = self.caller(headers, params, app)?;
        if caller.user == user || caller.admin { Ok(()) } else { Err(Refusal::Forbidden) }
    }
}

fn ok(result: impl Into<Value>) -> Json<Value> {
    Json(json!({"success": true, "result": result.into()}))
}

async fn conversations(
    State(history): State<History>,
    Path((app, user)): Path<(String, String)>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Result<Json<Value>, Refusal> {
    history.reader(&headers, &params, &app, &user)?;
    Ok(ok(history.store.conversations(&app, &user, false, params.page_size()).await?))
}

async fn archived_conversations(
    State(history): State<History>,
    Path((app, user)): Path<(String, String)>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Result<Json<Value>, Refusal> {
    history.reader(&headers, &params, &app, &user)?;
    Ok(ok(history.store.conversations(&app, &user, true, params.page_size()).await?))
}

/// chat21's conversation detail: `result` is `[conversation]`, or `[]` when there is none.
async fn detail(
    history: &History,
    (app, user, conversation): (String, String, String),
    params: &Params,
    headers: &HeaderMap,
    archived: bool,
) -> Result<Json<Value>, Refusal> {
    history.reader(headers, params, &app, &user)?;
    let found = history.store.conversation(&app, &user, &conversation, archived).await?;
    Ok(ok(found.into_iter().collect::<Vec<_>>()))
}

async fn conversation(
    State(history): State<History>,
    Path(path): Path<(String, String, String)>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Result<Json<Value>, Refusal> {
    detail(&history, path, &params, &headers, false).await
}

async fn archived_conversation(
    State(history): State<History>,
    Path(path): Path<(String, String, String)>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Result<Json<Value>, Refusal> {
    detail(&history, path, &params, &headers, true).await
}

async fn messages(
    State(history): State<History>,
    Path((app, user, conversation)): Path<(String, String, String)>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Result<Json<Value>, Refusal> {
    history.reader(&headers, &params, &app, &user)?;
    let page = history.store.messages(&app, &user, &conversation, params.before, params.page_size()).await?;
    Ok(ok(page))
}

async fn group(
    State(history): State<History>,
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

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";

    /// Parses a query as the handlers' `Query` extractor does.
    fn params(query: &str) -> Params {
        let uri: axum::http::Uri = format!("/?{query}").parse().unwrap();
        Query::<Params>::try_from_uri(&uri).unwrap().0
    }

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_token_comes_from_the_header_bare_or_prefixed_else_from_the_query() {
        let none = params("");
        for value in [JWT.to_owned(), format!("JWT {JWT}"), format!("Bearer {JWT}"), format!("bearer  {JWT} ")] {
            assert_eq!(token(&with_authorization(&value), &none), Some(JWT), "{value}");
        }
        assert_eq!(token(&HeaderMap::new(), &none), None);
        for query in ["jwt=q", "JWT=q", "token=q", "token=other&jwt=q", "JWT=q&token=other"] {
            assert_eq!(token(&HeaderMap::new(), &params(query)), Some("q"), "{query}");
        }
        // A header with a JWT shadows the query; one without (Basic, junk) does not.
        assert_eq!(token(&with_authorization(JWT), &params("token=q")), Some(JWT));
        for value in ["Basic dXNlcjpwYXNz", "JWT", "not a token", ""] {
            assert_eq!(token(&with_authorization(value), &params("token=q")), Some("q"), "{value}");
            assert_eq!(token(&with_authorization(value), &none), None, "{value}");
        }
        assert_eq!(token(&HeaderMap::new(), &params("token=")), None);
    }

    /// The paths of [`routes`], each answering its own name.
    #[tokio::test]
    async fn archived_is_a_list_and_any_other_conversation_a_detail() {
        use tower::ServiceExt;
        let paths = [
            "/api/{app}/{user}/conversations/archived",
            "/api/{app}/{user}/conversations/{conversation}",
            "/api/{app}/{user}/conversations/{conversation}/messages",
        ];
        let mut router = Router::new();
        for path in paths {
            router = router.route(path, get(move || async move { path }));
        }
        for (uri, route) in [
            ("/api/a/u/conversations/archived", 0),
            ("/api/a/u/conversations/bob", 1),
            ("/api/a/u/conversations/bob/messages", 2),
            ("/api/a/u/conversations/archived/messages", 2),
        ] {
            let request = axum::http::Request::get(uri).body(axum::body::Body::empty()).unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
            assert_eq!(body, paths[route].as_bytes(), "{uri}");
        }
    }

    #[test]
    fn pages_default_to_chat21s_200_and_stay_within_it() {
        for (query, size) in [("", 200), ("limit=10", 10), ("limit=100000", 200), ("limit=-5", 1), ("limit=0", 1)] {
            assert_eq!(params(query).page_size(), size, "{query}");
        }
    }
}
