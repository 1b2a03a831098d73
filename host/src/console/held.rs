//! The held queue page: the held messages (reason, plugin, sender, conversation, age, body as
//! the chain left it), released or discarded one or many through [`crate::held`], whose
//! once-only release holds here too: a released entry is acked and gone, so a second
//! moderator's release of it finds nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::{Value, json};

use super::session::Session;
use super::{Ids, Shared, moderator_ids, refuse};
use crate::held::{self, Check, Listed, Selection};

/// Entries the page lists (the queue may hold more; the count says how many).
const MAX_LISTED: usize = 200;
/// Bytes of JSON of a listed body; a larger body is listed as its size only (`inboxd held
/// list` shows it whole), so one listing stays within a few megabytes.
const MAX_BODY_SHOWN: usize = 64 * 1024;
/// Tries of one action: an entry another console is listing at that moment is briefly out of
/// the queue (taken, not acked), so an id not found is looked for again.
const ATTEMPTS: usize = 3;
/// Pause between those tries.
const RETRY_AFTER: Duration = Duration::from_millis(300);

#[derive(Serialize)]
struct Row {
    position: usize,
    message_id: Option<String>,
    plugin: String,
    reason: String,
    sender: String,
    recipient: String,
    received_at_ms: Option<i64>,
    /// Whether a release would deliver it; else why not.
    releasable: bool,
    problem: Option<String>,
    body: Value,
}

fn row(listed: Listed) -> Row {
    let (releasable, problem) = match listed.check {
        Check::Valid => (true, None),
        Check::Refused(err) => (false, Some(err.to_string())),
        Check::NoKey => (false, Some("held.secret is not set here: nothing can be released".to_owned())),
    };
    match listed.entry {
        Ok(entry) => Row {
            position: listed.position,
            message_id: Some(entry.message_id),
            plugin: entry.plugin,
            reason: entry.reason,
            sender: entry.sender,
            recipient: entry.recipient,
            received_at_ms: Some(entry.received_at_ms),
            releasable,
            problem,
            body: shown(entry.body),
        },
        Err(err) => Row {
            position: listed.position,
            message_id: None,
            plugin: String::new(),
            reason: String::new(),
            sender: String::new(),
            recipient: String::new(),
            received_at_ms: None,
            releasable: false,
            problem: Some(err.to_string()),
            body: Value::Null,
        },
    }
}

/// The body as listed: whole, or a note of its size when over [`MAX_BODY_SHOWN`].
fn shown(body: serde_json::Map<String, Value>) -> Value {
    let bytes = serde_json::to_vec(&body).map_or(0, |b| b.len());
    if bytes > MAX_BODY_SHOWN {
        json!({ "not_shown": format!("{bytes} bytes of JSON; `inboxd held list` shows it") })
    } else {
        Value::Object(body)
    }
}

pub(super) async fn list(State(console): State<Shared>) -> Response {
    let (plugins, _) = console.reloads.current();
    let mut rows = Vec::new();
    let listed = held::list(&console.setup.held(&plugins), |listed| {
        if rows.len() < MAX_LISTED {
            rows.push(row(listed));
        }
    })
    .await;
    match listed {
        Ok(total) => Json(json!({ "total": total, "entries": rows })).into_response(),
        Err(err) => refuse(StatusCode::BAD_GATEWAY, &format!("{err:#}")),
    }
}

pub(super) async fn release(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Json(ids): Json<Ids>,
) -> Response {
    let ids = match moderator_ids(&session, ids) {
        Ok(ids) => ids,
        Err(refused) => return refused.into_response(),
    };
    let (plugins, _) = console.reloads.current();
    let setup = console.setup.held(&plugins);
    let wanted: BTreeSet<String> = ids.iter().cloned().collect();
    let (mut released, mut refusals) = (0, Vec::<(String, String)>::new());
    let mut tries = Attempts::new(wanted.len());
    while tries.another().await {
        let open = wanted.iter().filter(|id| !refusals.iter().any(|(refused, _)| refused == *id)).cloned().collect();
        let before = refusals.len();
        let outcome = held::release(&setup, &Selection::Ids(open), |refused| {
            let id = refused.message_id.unwrap_or_default();
            if !refusals.iter().any(|(known, _)| *known == id) {
                refusals.push((id, format!("{:#}", refused.error)));
            }
        })
        .await;
        tries.settled(outcome.map(|counts| {
            released += counts.released;
            counts.released + refusals.len() - before
        }));
    }
    let failure = tries.failure;
    let missing = wanted.len().saturating_sub(released + refusals.len());
    let result = match &failure {
        Some(err) => format!("released {released}, then failed: {err}"),
        None => format!("released {released}, refused {}, not found {missing}", refusals.len()),
    };
    console.audit.record(&session.user, "release", ids, &result);
    let refused: Vec<Value> = refusals.iter().map(|(id, error)| json!({"message_id": id, "error": error})).collect();
    let status = if failure.is_some() { StatusCode::BAD_GATEWAY } else { StatusCode::OK };
    let body = json!({ "released": released, "refused": refused, "not_found": missing, "error": failure });
    (status, Json(body)).into_response()
}

pub(super) async fn discard(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Json(ids): Json<Ids>,
) -> Response {
    let ids = match moderator_ids(&session, ids) {
        Ok(ids) => ids,
        Err(refused) => return refused.into_response(),
    };
    let (plugins, _) = console.reloads.current();
    let setup = console.setup.held(&plugins);
    let wanted: BTreeSet<String> = ids.iter().cloned().collect();
    let mut tries = Attempts::new(wanted.len());
    while tries.another().await {
        tries.settled(held::discard(&setup, &Selection::Ids(wanted.clone())).await);
    }
    let (discarded, failure) = (tries.done, tries.failure);
    let missing = wanted.len().saturating_sub(discarded);
    let result = match &failure {
        Some(err) => format!("discarded {discarded}, then failed: {err}"),
        None => format!("discarded {discarded}, not found {missing}"),
    };
    console.audit.record(&session.user, "discard", ids, &result);
    let status = if failure.is_some() { StatusCode::BAD_GATEWAY } else { StatusCode::OK };
    (status, Json(json!({ "discarded": discarded, "not_found": missing, "error": failure }))).into_response()
}

/// The tries of one action: until every wanted entry is settled, an attempt fails, or
/// [`ATTEMPTS`] ran out.
struct Attempts {
    wanted: usize,
    done: usize,
    made: usize,
    failure: Option<String>,
}

impl Attempts {
    fn new(wanted: usize) -> Attempts {
        Attempts { wanted, done: 0, made: 0, failure: None }
    }

    /// Whether to try (again), after a pause if it is not the first try.
    async fn another(&mut self) -> bool {
        if self.done >= self.wanted || self.failure.is_some() || self.made == ATTEMPTS {
            return false;
        }
        if self.made > 0 {
            tokio::time::sleep(RETRY_AFTER).await;
        }
        self.made += 1;
        true
    }

    /// What a try settled, or why it failed.
    fn settled(&mut self, outcome: anyhow::Result<usize>) {
        match outcome {
            Ok(done) => self.done += done,
            Err(err) => self.failure = Some(format!("{err:#}")),
        }
    }
}
