//! The dead-letter page: the dead-letter queue browsed by reason (`x-inboxd-reason`), one
//! letter inspected (error, original routing key, body), replayed to the exchange under its
//! original routing key once the cause is fixed, or discarded. Letters are taken one at a time
//! with `basic.get` ([`Scan`]) and never collected: what is not acked goes back to the queue,
//! in place, when the connection closes. A letter's headers can be forged (anyone who may write
//! to the default exchange can put one there), so a replay goes only to a key inboxd consumes.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Confirmation, Connection};
use serde::{Deserialize, Serialize};
use serde_json::json;
use thiserror::Error;

use super::session::Session;
use super::{Ids, Setup, Shared, moderator_ids, refuse};
use crate::broker::{Scan, TooLong, close_reader, open_reader, short_string};
use crate::chat21::{InputError, Topic};
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

/// Why a letter is not replayed; it stays in the queue, where a moderator can discard it.
#[derive(Debug, Error, PartialEq, Eq)]
enum Unreplayable {
    #[error("it has no x-inboxd-routing-key")]
    NoKey,
    #[error("its x-inboxd-routing-key cannot be published: {0}")]
    TooLong(#[from] TooLong),
    #[error("its x-inboxd-routing-key {key:?} is not a key inboxd consumes ({})", .why.code())]
    NotConsumed { key: String, why: InputError },
}

/// What a replay or discard did: how many letters, and the ids refused with why.
#[derive(Default)]
struct Outcome {
    done: usize,
    refused: Vec<(String, Unreplayable)>,
}

async fn act(console: &Shared, session: &Session, ids: Ids, act: Act) -> Response {
    let ids = match moderator_ids(session, ids) {
        Ok(ids) => ids,
        Err(refused) => return refused.into_response(),
    };
    let wanted: BTreeSet<String> = ids.iter().cloned().collect();
    let (outcome, failure) = match apply(&console.setup, &wanted, act).await {
        Ok(outcome) => (outcome, None),
        Err((outcome, err)) => (outcome, Some(format!("{err:#}"))),
    };
    let (verb, action) = match act {
        Act::Replay => ("replayed", "replay"),
        Act::Discard => ("discarded", "discard-dead"),
    };
    let done = outcome.done;
    let refused: Vec<String> = outcome.refused.iter().map(|(id, why)| format!("{id}: {why}")).collect();
    let missing = wanted.len().saturating_sub(done + refused.len());
    let result = match &failure {
        Some(err) => format!("{verb} {done}, then failed: {err}"),
        None if refused.is_empty() => format!("{verb} {done}, not found {missing}"),
        None => format!("{verb} {done}, not found {missing}, refused (kept in the queue): {}", refused.join("; ")),
    };
    console.audit.record(&session.user, action, ids, &result);
    let (status, error) = match failure {
        Some(err) => (StatusCode::BAD_GATEWAY, Some(err)),
        None if refused.is_empty() => (StatusCode::OK, None),
        None => {
            (StatusCode::UNPROCESSABLE_ENTITY, Some(format!("not replayed, kept in the queue: {}", refused.join("; "))))
        }
    };
    let body = json!({ "done": done, "not_found": missing, "refused": refused, "error": error });
    (status, Json(body)).into_response()
}

/// Replays (publish, confirm, then ack) or discards (ack) the letters named in `wanted`; what
/// it did, also on failure (then up to the failure).
async fn apply(setup: &Setup, wanted: &BTreeSet<String>, act: Act) -> Result<Outcome, (Outcome, anyhow::Error)> {
    let (connection, channel) = open(setup).await.map_err(|e| (Outcome::default(), e))?;
    let mut outcome = Outcome::default();
    let result = async {
        if act == Act::Replay {
            channel.confirm_select(ConfirmSelectOptions::default()).await.context("confirm mode")?;
        }
        let mut scan = letters(setup, &channel).await?;
        while let Some(got) = scan.next().await? {
            let id = id_of(&got);
            if !wanted.contains(&id) {
                continue;
            }
            if act == Act::Replay {
                match replay_key(&setup.app_id, got.delivery.properties.headers().as_ref()) {
                    Ok(key) => republish(setup, &channel, &got, key).await?,
                    Err(why) => {
                        outcome.refused.push((id, why));
                        continue;
                    }
                }
            }
            got.delivery.acker.ack(BasicAckOptions::default()).await.context("acking a dead letter")?;
            outcome.done += 1;
        }
        anyhow::Ok(())
    }
    .await;
    close_reader(connection).await;
    match result {
        Ok(()) => Ok(outcome),
        Err(err) => Err((outcome, err)),
    }
}

/// The routing key a letter is replayed to: its `x-inboxd-routing-key`, only if it is a key
/// inboxd consumes for `app` (so the replay goes through routing again, never straight into
/// an inbox) and one AMQP can carry.
fn replay_key(app: &str, headers: Option<&FieldTable>) -> Result<ShortString, Unreplayable> {
    let key = header(headers, ROUTING_KEY).ok_or(Unreplayable::NoKey)?;
    let short = short_string("routing key", &key)?;
    match Topic::parse(app, &key) {
        Ok(_) => Ok(short),
        Err(why) => Err(Unreplayable::NotConsumed { key, why }),
    }
}

/// Publishes a letter to the exchange under `key`, without inboxd's dead-letter headers, and
/// waits for the broker's confirm.
async fn republish(setup: &Setup, channel: &Channel, got: &BasicGetMessage, key: ShortString) -> anyhow::Result<()> {
    let properties = &got.delivery.properties;
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
            key,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key(key: &str) -> FieldTable {
        let mut headers = FieldTable::default();
        headers.insert(ROUTING_KEY.into(), AMQPValue::LongString(key.into()));
        headers
    }

    fn refusal(key: &str) -> Unreplayable {
        replay_key("app", Some(&with_key(key))).unwrap_err()
    }

    #[test]
    fn only_keys_inboxd_consumes_for_its_app_are_replayed() {
        let outgoing = "apps.app.outgoing.users.alice.messages.bob.outgoing";
        assert_eq!(replay_key("app", Some(&with_key(outgoing))).unwrap().as_str(), outgoing);
        let update = "apps.observer.app.groups.update";
        assert_eq!(replay_key("app", Some(&with_key(update))).unwrap().as_str(), update);
        // A victim's inbox, past routing: not a key inboxd consumes.
        let inbox = refusal("apps.app.users.victim.messages.alice.clientadded");
        assert!(matches!(&inbox, Unreplayable::NotConsumed { why, .. } if why.code() == "unknown-topic"), "{inbox}");
        let other = refusal("apps.other.outgoing.users.alice.messages.bob.outgoing");
        assert!(matches!(&other, Unreplayable::NotConsumed { why, .. } if why.code() == "wrong-app"), "{other}");
        assert_eq!(replay_key("app", None).unwrap_err(), Unreplayable::NoKey);
        assert_eq!(replay_key("app", Some(&FieldTable::default())).unwrap_err(), Unreplayable::NoKey);
    }

    #[test]
    fn a_key_over_255_bytes_is_refused_not_a_panic() {
        let key = format!("apps.app.outgoing.users.{}.messages.bob.outgoing", "a".repeat(300));
        assert_eq!(refusal(&key), Unreplayable::TooLong(TooLong { what: "routing key", bytes: key.len() }));
        assert!(refusal(&"x".repeat(100_000)).to_string().contains("over AMQP's limit of 255"));
    }
}
