//! The console's pages, built into the binary (no CDN, no build step): one HTML shell, its
//! stylesheet and script, and the login page.

use axum::http::header::CONTENT_TYPE;
use axum::response::{Html, IntoResponse, Response};

const INDEX: &str = include_str!("assets/index.html");
const LOGIN: &str = include_str!("assets/login.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");
/// Where the login page shows why the last attempt failed.
const ERROR_SLOT: &str = "<!-- error -->";

pub(super) async fn index() -> Html<&'static str> {
    Html(INDEX)
}

pub(super) async fn script() -> Response {
    ([(CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response()
}

pub(super) async fn style() -> Response {
    ([(CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

/// The login page, with `error` (fixed text, never user input) shown above the form.
pub(super) fn login_page(error: Option<&'static str>) -> String {
    let shown = error.map(|e| format!("<p class=\"error\" role=\"alert\">{e}</p>")).unwrap_or_default();
    LOGIN.replace(ERROR_SLOT, &shown)
}
