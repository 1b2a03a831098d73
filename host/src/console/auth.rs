//! Logging in and out, and the guard in front of every other console route: no session, no
//! page (redirected to the login) and no data (401); no CSRF token, no action (403).

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form, Json};
use serde::Deserialize;
use serde_json::json;

use super::{Shared, assets, csrf, password, refuse, session};
use session::Session;

/// Longest user name kept in the audit log of a failed login.
const MAX_LOGGED_NAME: usize = 64;

#[derive(Deserialize)]
pub(super) struct Credentials {
    user: String,
    password: String,
}

pub(super) async fn login_page() -> Html<String> {
    Html(assets::login_page(None))
}

/// Checks the credentials against the configured accounts (the same Argon2 work whether or not
/// the name exists) and opens a session.
pub(super) async fn login(State(console): State<Shared>, Form(credentials): Form<Credentials>) -> Response {
    let Credentials { user, password } = credentials;
    let account = console.setup.console.accounts.iter().find(|a| a.name == user).cloned();
    let Ok(_permit) = console.logins.acquire().await else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let phc = account.as_ref().map_or_else(|| decoy().to_owned(), |a| a.password_hash.clone());
    let matched = tokio::task::spawn_blocking(move || password::verify(&password, &phc)).await.unwrap_or(false);
    let Some(account) = account.filter(|_| matched) else {
        let shown: String = user.chars().take(MAX_LOGGED_NAME).collect();
        console.audit.record(&shown, "login-failed", Vec::new(), "wrong name or password");
        let page = assets::login_page(Some("Wrong name or password."));
        return (StatusCode::UNAUTHORIZED, Html(page)).into_response();
    };
    let token = match console.sessions.open(&account.name, account.role, Instant::now()) {
        Ok(token) => token,
        Err(err) => {
            tracing::error!(error = %err, "no randomness for a console session");
            return refuse(StatusCode::INTERNAL_SERVER_ERROR, "cannot open a session");
        }
    };
    console.audit.record(&account.name, "login", Vec::new(), "ok");
    let mut response = Redirect::to("/console/").into_response();
    set_cookie(response.headers_mut(), &console.sessions.cookie(&token));
    response
}

/// Ends the session (a CSRF-checked POST, so another site cannot log a moderator out).
pub(super) async fn logout(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
) -> Response {
    if let Some(token) = session::token(&headers) {
        console.sessions.close(token);
    }
    console.audit.record(&session.user, "logout", Vec::new(), "ok");
    let mut response = Json(json!({ "ok": true })).into_response();
    set_cookie(response.headers_mut(), &session::expired_cookie());
    response
}

/// Who is logged in, with the CSRF token the page sends back with each action.
pub(super) async fn whoami(Extension(session): Extension<Session>) -> Response {
    Json(json!({ "user": session.user, "role": session.role, "csrf": session.csrf })).into_response()
}

/// The guard: a live session for everything, its CSRF token for everything but reads.
pub(super) async fn guard(State(console): State<Shared>, mut request: Request, next: Next) -> Response {
    let api = request.uri().path().starts_with("/console/api/");
    let session = session::token(request.headers()).and_then(|token| console.sessions.get(token, Instant::now()));
    let Some(session) = session else {
        return if api || request.method() != Method::GET {
            refuse(StatusCode::UNAUTHORIZED, "log in first")
        } else {
            Redirect::to("/console/login").into_response()
        };
    };
    let reads = request.method() == Method::GET || request.method() == Method::HEAD;
    if !reads && !csrf::carried(request.headers(), &session.csrf) {
        return refuse(StatusCode::FORBIDDEN, "the CSRF token is missing or wrong: reload the page");
    }
    request.extensions_mut().insert(session);
    next.run(request).await
}

fn set_cookie(headers: &mut HeaderMap, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        headers.insert(header::SET_COOKIE, value);
    }
}

/// A hash no password is known for, checked when the name is unknown so that a wrong name
/// takes as long as a wrong password.
fn decoy() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| password::hash(&uuid::Uuid::new_v4().to_string()).unwrap_or_default())
}
