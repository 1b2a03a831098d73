//! The chain page: each plugin of the running chain (file, content hash, hooks, limits,
//! failure policy), when the chain was loaded, the last reloads with their outcome and error,
//! and the reload button (a moderator's request to the daemon's reloader).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::session::Session;
use super::{Shared, moderator};
use crate::plugin::{PluginConfig, sha256_hex};

pub(super) async fn show(State(console): State<Shared>) -> Response {
    let (plugins, loaded_at_ms) = console.reloads.current();
    let described = tokio::task::spawn_blocking(move || plugins.chain.iter().map(describe).collect::<Vec<_>>())
        .await
        .unwrap_or_default();
    let reloads = console.reloads.recent();
    Json(json!({ "loaded_at_ms": loaded_at_ms, "plugins": described, "reloads": reloads })).into_response()
}

/// One plugin as configured, with the hash of its file as it is on disk now.
fn describe(plugin: &PluginConfig) -> Value {
    let sha256 = std::fs::read(&plugin.file).map_or_else(|err| format!("unreadable: {err}"), |b| sha256_hex(&b));
    let hooks: Vec<&str> = [("on-message", plugin.hooks.on_message), ("on-deliver", plugin.hooks.on_deliver)]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
    json!({
        "name": plugin.name,
        "file": plugin.file.display().to_string(),
        "sha256": sha256,
        "hooks": hooks,
        "failure": plugin.failure.as_str(),
        "deadline_ms": plugin.deadline.as_millis() as u64,
        "init_deadline_ms": plugin.init_deadline.as_millis() as u64,
        "memory_mb": plugin.memory_bytes / (1024 * 1024),
        "fuel": plugin.fuel,
        "recycle_after": plugin.recycle_after,
        "grants": plugin.grants.iter().map(|g| format!("{g:?}").to_lowercase()).collect::<Vec<_>>(),
    })
}

pub(super) async fn reload(State(console): State<Shared>, Extension(session): Extension<Session>) -> Response {
    if let Err(refused) = moderator(&session) {
        return refused.into_response();
    }
    console.reloads.request();
    console.audit.record(&session.user, "reload", Vec::new(), "requested");
    Json(json!({ "requested": true })).into_response()
}
