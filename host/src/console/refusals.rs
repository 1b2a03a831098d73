//! The recent refusals page: the last rejected and dropped messages the pipeline remembered
//! ([`crate::refusals`]), newest first; bodies only where `console.refusal_bodies` is on.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Shared;

pub(super) async fn list(State(console): State<Shared>) -> Response {
    let refusals = &console.refusals;
    let kept = refusals.newest_first();
    Json(json!({ "bodies": refusals.keeps_bodies(), "capacity": console.setup.console.recent_refusals, "refusals": kept }))
        .into_response()
}
