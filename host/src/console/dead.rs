//! The dead-letter page: the dead-letter queue browsed by reason (`x-inboxd-reason`), one
//! letter inspected (error, original routing key, body), replayed to the exchange under its
//! original routing key once the cause is fixed, or discarded. Letters are taken one at a time
//! with `basic.get` ([`Scan`]) and never collected: what is not acked goes back to the queue,
//! in place, when the connection closes.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Confirmation, Connection};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::session::Session;
use super::{Ids, Setup, Shared, moderator_ids, refuse};
use crate::broker::{Scan, close_reader, open_reader};
use crate::plugin::sha256_hex;

/// Letters the page lists (after the reason filter).
const MAX_LISTED: usize = 500;
/// Letters one scan reads at most: the reason counts cover these.
const MAX_SCANNED: u32 = 10_000;
/// Bytes of a body shown.
const MAX_BODY_SHOWN: usize = 16 * 1024;
/// The header with the original routing key, which a replay publishes to.
const ROUTING_KEY: &str = "x-inboxd-routing-key";

#[derive(Deserialize)]
pub(super) struct Filter {
    reason: Option<String>,
}

#[derive(Serialize)]
struct Letter {
    /// The AMQP message id, or a hash of the routing key and body: stable while it waits.
    id: String,
    position: usize,
    reason: String,
    error: String,
    routing_key: String,
    bytes: usize,
    body: String,
}

pub(super) async fn list(State(console): State<Shared>, Query(filter): Query<Filter>) -> Response {
    let result = async {
        let (connection, channel) = open(&console.setup).await?;
        let mut scan = letters(&console.setup, &channel).await?;
        let (mut letters, mut reasons) = (Vec::new(), BTreeMap::<String, usize>::new());
        while let Some(got) = scan.next().await? {
            let letter = letter(&got, scan.position);
            *reasons.entry(letter.reason.clone()).or_default() += 1;
            let wanted = filter.reason.as_deref().is_none_or(|r| r.is_empty() || r == letter.reason);
            if wanted && letters.len() < MAX_LISTED {
                letters.push(letter);
            }
        }
        close_reader(connection).await;
        anyhow::Ok(json!({ "total": scan.total, "scanned": scan.position, "reasons": reasons, "letters": letters }))
    }
    .await;
    match result {
        Ok(body) => Json(body).into_response(),
        Err(err) => refuse(StatusCode::BAD_GATEWAY, &format!("{err:#}")),
    }
}

pub(super) async fn replay(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Json(ids): Json<Ids>,
) -> Response {
    act(&console, &session, ids, Act::Replay).await
}

pub(super) async fn discard(
    State(console): State<Shared>,
    Extension(session): Extension<Session>,
    Json(ids): Json<Ids>,
) -> Response {
    act(&console, &session, ids, Act::Discard).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Act {
    Replay,
    Discard,
}

async fn act(console: &Shared, session: &Session, ids: Ids, act: Act) -> Response {
    let ids = match moderator_ids(session, ids) {
        Ok(ids) => ids,
        Err(refused) => return refused.into_response(),
    };
    let wanted: BTreeSet<String> = ids.iter().cloned().collect();
    let (done, failure) = match apply(&console.setup, &wanted, act).await {
        Ok(done) => (done, None),
        Err((done, err)) => (done, Some(format!("{err:#}"))),
    };
    let (verb, action) = match act {
        Act::Replay => ("replayed", "replay"),
        Act::Discard => ("discarded", "discard-dead"),
    };
    let missing = wanted.len().saturating_sub(done);
    let result = match &failure {
        Some(err) => format!("{verb} {done}, then failed: {err}"),
        None => format!("{verb} {done}, not found {missing}"),
    };
    console.audit.record(&session.user, action, ids, &result);
    let status = if failure.is_some() { StatusCode::BAD_GATEWAY } else { StatusCode::OK };
    (status, Json(json!({ "done": done, "not_found": missing, "error": failure }))).into_response()
}

/// Replays (publish, confirm, then ack) or discards (ack) the letters named in `wanted`;
/// how many, and on failure how many before it.
async fn apply(setup: &Setup, wanted: &BTreeSet<String>, act: Act) -> Result<usize, (usize, anyhow::Error)> {
    let (connection, channel) = open(setup).await.map_err(|e| (0, e))?;
    let mut done = 0;
    let result = async {
        if act == Act::Replay {
            channel.confirm_select(ConfirmSelectOptions::default()).await.context("confirm mode")?;
        }
        let mut scan = letters(setup, &channel).await?;
        while let Some(got) = scan.next().await? {
            if !wanted.contains(&id_of(&got)) {
                continue;
            }
            if act == Act::Replay {
                republish(setup, &channel, &got).await?;
            }
            got.delivery.acker.ack(BasicAckOptions::default()).await.context("acking a dead letter")?;
            done += 1;
        }
        anyhow::Ok(())
    }
    .await;
    close_reader(connection).await;
    result.map(|()| done).map_err(|e| (done, e))
}

/// Publishes a letter to the exchange under its original routing key, without inboxd's
/// dead-letter headers, and waits for the broker's confirm.
async fn republish(setup: &Setup, channel: &Channel, got: &BasicGetMessage) -> anyhow::Result<()> {
    let properties = &got.delivery.properties;
    let key = header(properties.headers().as_ref(), ROUTING_KEY)
        .context("the letter has no x-inboxd-routing-key: it cannot be replayed")?;
    let mut kept = FieldTable::default();
    for (name, value) in properties.headers().as_ref().map(FieldTable::inner).into_iter().flatten() {
        if !name.as_str().starts_with("x-inboxd-") {
            kept.insert(name.clone(), value.clone());
        }
    }
    let properties = properties.clone().with_headers(kept);
    let confirm = channel
        .basic_publish(
            setup.broker.exchange.as_str().into(),
            key.as_str().into(),
            BasicPublishOptions::default(),
            &got.delivery.data,
            properties,
        )
        .await
        .context("replaying a dead letter")?;
    match confirm.await.context("waiting for the broker's confirm")? {
        Confirmation::Nack(_) => anyhow::bail!("the broker refused the replayed letter"),
        _ => Ok(()),
    }
}

fn letter(got: &BasicGetMessage, position: usize) -> Letter {
    let headers = got.delivery.properties.headers().as_ref();
    let text = |name| header(headers, name).unwrap_or_default();
    let data = &got.delivery.data;
    let shown = &data[..data.len().min(MAX_BODY_SHOWN)];
    Letter {
        id: id_of(got),
        position,
        reason: text("x-inboxd-reason"),
        error: text("x-inboxd-error"),
        routing_key: text(ROUTING_KEY),
        bytes: data.len(),
        body: String::from_utf8_lossy(shown).into_owned(),
    }
}

fn id_of(got: &BasicGetMessage) -> String {
    if let Some(id) = got.delivery.properties.message_id() {
        return id.as_str().to_owned();
    }
    let key = header(got.delivery.properties.headers().as_ref(), ROUTING_KEY).unwrap_or_default();
    let mut bytes = key.into_bytes();
    bytes.push(0);
    bytes.extend_from_slice(&got.delivery.data);
    sha256_hex(&bytes)[..24].to_owned()
}

fn header(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

async fn open(setup: &Setup) -> anyhow::Result<(Connection, Channel)> {
    open_reader(&setup.broker.urls, "inboxd console").await
}

/// The dead-letter queue, at most [`MAX_SCANNED`] letters.
async fn letters<'a>(setup: &Setup, channel: &'a Channel) -> anyhow::Result<Scan<'a>> {
    Scan::open(channel, setup.broker.dead_letter_queue(), MAX_SCANNED).await
}
