//! chat21-http-server's API on the operator HTTP server, so its clients read and write unchanged:
//! chat21client.js (web widget, ionic app) reads history, `@chat21/chat21-node-sdk` (Tiledesk's
//! server) sends messages and manages groups. chat21's tokens (bare in `Authorization` or in the
//! query) and its refusal answers; the routes, one file per area:
//! - `reads`: conversations (live and archived, list and detail), messages, groups;
//! - `messages`: `POST /messages` (and `/messages/sync`), published on the sender's outgoing
//!   key like an MQTT client's message (`outbound`: confirm-mode publishing);
//! - `groups`: create, join, set members, leave, rename, attributes (`group_change`: the pure
//!   part, chat21's group JSON and `system` info messages; `join_history`: the history copy);
//! - `conversations`: archive, and deleting a group's conversations or messages everywhere;
//! - `push`: app instances and push requests, stored (no push provider).

mod conversations;
mod group_change;
mod groups;
mod join_history;
mod messages;
mod outbound;
mod push;
mod reads;

use std::ops::Deref;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::broker::BrokerConfig;
use crate::store::{GroupDirectory, Store};
use crate::telemetry;
use crate::token::{AuthConfig, Caller, Refused, Verifier};

pub use outbound::Outbound;

/// The most a page holds whatever `limit` asks, and the page without one: chat21-http-server
/// answers its 200 newest. A larger `limit` is clamped, so one request costs a bounded query.
pub const MAX_PAGE: i64 = 200;

/// What the API's routes share: a clone per request.
#[derive(Clone)]
struct Api {
    store: Store,
    app: String,
    verifier: Verifier,
    /// Where messages, archives and group updates are published, as chat21-http-server does.
    outbound: Outbound,
    /// This process's group directory, told of a group change at once (other processes read
    /// the store).
    groups: Arc<GroupDirectory>,
    /// Group changes of this process one at a time (each reads, changes and stores the group).
    group_changes: Arc<tokio::sync::Mutex<()>>,
    /// Most members a group may have once changed (`routing.max_inline_members`).
    max_group_members: usize,
}

/// What the API is served from.
pub struct Backend<'a> {
    pub store: Store,
    pub groups: Arc<GroupDirectory>,
    pub app: &'a str,
    pub auth: &'a AuthConfig,
    pub broker: &'a BrokerConfig,
    pub max_group_members: usize,
}

/// The API's routes under `/api`, or `None` when there is no signing secret to check tokens.
/// `conversations/archived` is matched before `conversations/<c>`, as in chat21 (so a
/// conversation named `archived` has no detail route, there as here); likewise
/// `conversations/timelines`, whose GET is the detail as in chat21.
pub fn routes(backend: Backend<'_>) -> Option<Router> {
    let Backend { store, groups, app, auth, broker, max_group_members } = backend;
    if auth.secret.is_empty() {
        return None;
    }
    let verifier = Verifier::new(&auth.secret, &auth.resource_server_id);
    let outbound = Outbound::new(broker);
    let group_changes = Arc::default();
    let api = Api { store, app: app.to_owned(), verifier, outbound, groups, group_changes, max_group_members };
    Some(
        Router::new()
            .route("/verify", get(reads::verify))
            .route("/api/{app}/getInfo", get(reads::info))
            .route("/api/{app}/{user}/conversations", get(reads::conversations))
            .route("/api/{app}/{user}/conversations/archived", get(reads::archived_conversations))
            .route("/api/{app}/{user}/conversations/{conversation}", get(reads::conversation))
            .route(
                "/api/{app}/{user}/conversations/timelines",
                get(reads::timelines_detail).delete(conversations::delete_conversations),
            )
            .route("/api/{app}/{user}/messages/timelines", delete(conversations::delete_messages))
            .route("/api/{app}/{user}/archived_conversations", get(reads::archived_conversations))
            .route("/api/{app}/{user}/archived_conversations/{conversation}", get(reads::archived_conversation))
            .route("/api/{app}/{user}/conversations/{conversation}/messages", get(reads::messages))
            .route("/api/{app}/conversations/{recipient}", delete(conversations::archive))
            .route("/api/{app}/messages", post(messages::send))
            .route("/api/{app}/messages/sync", post(messages::send_sync))
            .route("/api/{app}/groups", post(groups::create))
            .route("/api/{app}/groups/{group}", get(reads::group).put(groups::rename))
            .route("/api/{app}/groups/{group}/members", post(groups::join).put(groups::set_members))
            .route("/api/{app}/groups/{group}/members/{member}", delete(groups::leave))
            .route("/api/{app}/groups/{group}/attributes", put(groups::attributes))
            .route("/api/{app}/{user}/instances/{instance}", post(push::instance))
            .route("/api/{app}/notify", post(push::notify))
            .with_state(api),
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
    /// A body chat21 refuses before anything happens: `405` with its text (`"… is mandatory"`).
    Invalid(String),
    /// A change chat21 refuses once it looked (no such group, not the owner, …): `405
    /// {"success":false,"err":…}`.
    Denied(String),
    /// The store failed.
    Failed(anyhow::Error),
    /// The broker did not confirm a publish: nothing may be assumed sent.
    Unpublished(anyhow::Error),
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
            Refusal::Invalid(text) => return (StatusCode::METHOD_NOT_ALLOWED, text).into_response(),
            Refusal::Denied(err) => (StatusCode::METHOD_NOT_ALLOWED, err),
            Refusal::Failed(err) => {
                tracing::warn!(error = format!("{err:#}"), "API store query failed");
                (StatusCode::SERVICE_UNAVAILABLE, "the store is not available".to_owned())
            }
            Refusal::Unpublished(err) => {
                tracing::warn!(error = format!("{err:#}"), "API publish not confirmed");
                (StatusCode::SERVICE_UNAVAILABLE, "the broker did not confirm the publish".to_owned())
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

/// One request's view of the API: the shared state, its query and headers (where the token is).
struct Call {
    api: Api,
    params: Params,
    headers: HeaderMap,
}

impl FromRequestParts<Api> for Call {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Self::Rejection> {
        let Query(params) =
            Query::<Params>::from_request_parts(parts, api).await.map_err(IntoResponse::into_response)?;
        Ok(Call { api: api.clone(), params, headers: parts.headers.clone() })
    }
}

impl Deref for Call {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Call {
    /// Who the request's token speaks for, for the path's `app` (see [`Api::caller`]).
    fn caller(&self, app: &str) -> Result<Caller, Refusal> {
        self.api.caller(&self.headers, &self.params, app)
    }

    /// Checks that the request may read `user`'s data (see [`Api::reader`]).
    fn reader(&self, app: &str, user: &str) -> Result<(), Refusal> {
        self.api.reader(&self.headers, &self.params, app, user)
    }
}

impl Api {
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

/// A request body as chat21's `bodyParser.json()` leaves it: the JSON object, or nothing (an
/// empty, non-JSON or non-object body reads as `{}`, so chat21's own "mandatory" answers follow).
fn body_object(body: &[u8]) -> Map<String, Value> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(object)) => object,
        _ => Map::new(),
    }
}

/// `body[field]` if JavaScript would find it truthy (present, not null, false, 0 or "").
fn truthy<'a>(body: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    body.get(field).filter(|value| match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    })
}

/// `value` as a routable id (a string without `. / + * #` or spaces), else chat21's 405.
fn routable(what: &'static str, value: &Value) -> Result<String, Refusal> {
    let id = value.as_str().ok_or_else(|| Refusal::Invalid(format!("{what} must be a string")))?;
    crate::chat21::check_id(what, id).map_err(|err| Refusal::Invalid(err.to_string()))?;
    Ok(id.to_owned())
}

/// chat21's bare success answer.
fn success() -> Json<Value> {
    Json(json!({"success": true}))
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

    /// Every route of every area resolves (a token is asked for: 403), the static words before
    /// the ids chat21 puts in their place; a route chat21 does not have is not found.
    #[tokio::test]
    async fn the_routes_of_every_area_resolve() {
        use tower::ServiceExt;
        let dir = tempfile::tempdir().unwrap();
        let url = crate::store::StoreUrl::Sqlite(format!("sqlite://{}", dir.path().join("t.db").display()));
        let store = Store::open(&url).await.unwrap().unwrap();
        let auth = crate::token::validate(crate::token::RawAuth::default()).unwrap();
        let auth = AuthConfig { secret: "s".repeat(32), ..auth };
        let broker = crate::broker::validate(crate::broker::RawBroker::default(), "app").unwrap();
        let groups = Arc::new(GroupDirectory::new(10));
        let router =
            routes(Backend { store, groups, app: "app", auth: &auth, broker: &broker, max_group_members: 10 }).unwrap();
        let resolved = [
            ("GET", "/api/app/getInfo"),
            ("GET", "/api/app/u/conversations/timelines"),
            ("DELETE", "/api/app/g/conversations/timelines"),
            ("DELETE", "/api/app/g/messages/timelines"),
            ("GET", "/api/app/u/conversations/c/messages"),
            ("DELETE", "/api/app/conversations/bob"),
            ("POST", "/api/app/messages"),
            ("POST", "/api/app/messages/sync"),
            ("POST", "/api/app/groups"),
            ("GET", "/api/app/groups/g"),
            ("PUT", "/api/app/groups/g"),
            ("POST", "/api/app/groups/g/members"),
            ("PUT", "/api/app/groups/g/members"),
            ("DELETE", "/api/app/groups/g/members/m"),
            ("PUT", "/api/app/groups/g/attributes"),
            ("POST", "/api/app/u/instances/i"),
            ("POST", "/api/app/notify"),
        ];
        let call = |method: &str, uri: &str| {
            let request = axum::http::Request::builder().method(method).uri(uri).body(axum::body::Body::empty());
            router.clone().oneshot(request.unwrap())
        };
        for (method, uri) in resolved {
            assert_eq!(call(method, uri).await.unwrap().status(), StatusCode::FORBIDDEN, "{method} {uri}");
        }
        for (method, uri) in [("PUT", "/api/app/typings/bob"), ("DELETE", "/api/app/typings/bob")] {
            assert_eq!(call(method, uri).await.unwrap().status(), StatusCode::NOT_FOUND, "{method} {uri}");
        }
        // chat21's `/verify`: the valid token's claims, else an empty 200.
        let ttl = std::time::Duration::from_secs(60);
        let request =
            crate::token::TokenRequest::now("alice", "app", &auth.resource_server_id, Default::default(), ttl);
        let jwt = crate::token::mint(&auth.secret, None, &request).unwrap();
        for (uri, sub) in
            [(format!("/verify?jwt={jwt}"), json!("alice")), ("/verify?jwt=a.b.c".to_owned(), Value::Null)]
        {
            let response = call("GET", &uri).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{uri}");
            let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
            let claims: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() };
            assert_eq!(claims["sub"], sub, "{uri}");
        }
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
