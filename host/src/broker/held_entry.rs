//! The held-entry codec, the one place that knows how a held message is written to the held
//! queue and read back: the parked body plus headers naming who held it and the protected
//! fields, signed with HMAC-SHA256 under `[held] secret`. The publisher encodes with it
//! ([`super::InboxPublisher::hold`]); `inboxd held` lists, checks and releases with it.
//!
//! The signature covers the exact body bytes and every identity header (app, sender, recipient,
//! message id, received-at, plugin, reason), each length-prefixed after a version tag, so no
//! field can be moved, altered or swapped into another. It is what lets `inboxd held release`
//! trust an entry: anyone with write access to the default exchange can put one in the queue.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Map, Value};
use sha2::Sha256;
use thiserror::Error;

use crate::chat21::{self, HeldMessage, InputError, Message};

/// Shortest `[held] secret` accepted, in bytes: the HMAC-SHA256 output size.
pub const MIN_SECRET_BYTES: usize = 32;

/// The plugin that held the message.
pub const PLUGIN: &str = "x-inboxd-plugin";
/// The plugin's reason, for the moderator.
pub const REASON: &str = "x-inboxd-reason";
pub const APP: &str = "x-inboxd-app";
pub const SENDER: &str = "x-inboxd-sender";
pub const RECIPIENT: &str = "x-inboxd-recipient";
pub const MESSAGE_ID: &str = "x-inboxd-message-id";
/// When inboxd received the message, ms since the Unix epoch (a long-long integer).
pub const RECEIVED_AT: &str = "x-inboxd-received-at";
/// `sha256=<hex>` of the HMAC over [`VERSION`], the fields above and the body.
pub const SIGNATURE: &str = "x-inboxd-held-signature";

/// Domain separation and format version of the signed bytes.
const VERSION: &[u8] = b"inboxd held entry v1";

/// The key held entries are signed with (`[held] secret`); its bytes are never printed.
#[derive(Clone)]
pub struct HeldKey(Arc<[u8]>);

impl HeldKey {
    /// A key from a configured secret.
    ///
    /// # Errors
    /// The secret's length when it is shorter than [`MIN_SECRET_BYTES`].
    pub fn new(secret: &str) -> Result<HeldKey, usize> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(secret.len());
        }
        Ok(HeldKey(secret.as_bytes().into()))
    }

    fn mac(&self, fields: &Fields<'_>, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(VERSION);
        for (_, text) in fields.texts() {
            mac.update(&(text.len() as u64).to_be_bytes());
            mac.update(text.as_bytes());
        }
        mac.update(&fields.received_at_ms.to_be_bytes());
        mac.update(&(payload.len() as u64).to_be_bytes());
        mac.update(payload);
        mac
    }
}

impl fmt::Debug for HeldKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HeldKey(..)")
    }
}

/// One held message, as a moderator sees it and as a release delivers it.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldEntry {
    pub app: String,
    pub sender: String,
    pub recipient: String,
    pub message_id: String,
    pub received_at_ms: i64,
    pub plugin: String,
    pub reason: String,
    /// The normalised message body, as the policy chain left it.
    pub body: Map<String, Value>,
}

impl HeldEntry {
    /// The message to deliver.
    pub fn into_message(self) -> Message {
        Message {
            app: self.app,
            sender: self.sender,
            recipient: self.recipient,
            message_id: self.message_id,
            body: self.body,
            received_at_ms: self.received_at_ms,
        }
    }
}

/// Why an entry is not released (it is left in the held queue).
#[derive(Debug, Error)]
pub enum EntryError {
    #[error("header {0} is missing or not of the expected type")]
    Header(&'static str),
    #[error("not signed: it was not written by an inboxd with [held] secret")]
    Unsigned,
    #[error("the signature does not match: forged, altered, or signed with another [held] secret")]
    Signature,
    #[error("the body is not a JSON object")]
    Body,
    #[error("app {0:?} is not the app this inboxd serves")]
    OtherApp(String),
    #[error(transparent)]
    Id(#[from] InputError),
}

/// The identity fields, borrowed from a message or from headers.
struct Fields<'a> {
    app: &'a str,
    sender: &'a str,
    recipient: &'a str,
    message_id: &'a str,
    plugin: &'a str,
    reason: &'a str,
    received_at_ms: i64,
}

impl<'a> Fields<'a> {
    fn of(held: &'a HeldMessage) -> Fields<'a> {
        let m = &held.message;
        Fields {
            app: &m.app,
            sender: &m.sender,
            recipient: &m.recipient,
            message_id: &m.message_id,
            plugin: &held.plugin,
            reason: &held.reason,
            received_at_ms: m.received_at_ms,
        }
    }

    /// The text fields with their headers, in the order they are signed.
    fn texts(&self) -> [(&'static str, &'a str); 6] {
        [
            (APP, self.app),
            (SENDER, self.sender),
            (RECIPIENT, self.recipient),
            (MESSAGE_ID, self.message_id),
            (PLUGIN, self.plugin),
            (REASON, self.reason),
        ]
    }

    fn read(headers: &'a FieldTable) -> Result<Fields<'a>, EntryError> {
        let text = |name: &'static str| text(headers, name).ok_or(EntryError::Header(name));
        let received_at_ms = match headers.inner().get(RECEIVED_AT) {
            Some(AMQPValue::LongLongInt(ms)) => *ms,
            _ => return Err(EntryError::Header(RECEIVED_AT)),
        };
        Ok(Fields {
            app: text(APP)?,
            sender: text(SENDER)?,
            recipient: text(RECIPIENT)?,
            message_id: text(MESSAGE_ID)?,
            plugin: text(PLUGIN)?,
            reason: text(REASON)?,
            received_at_ms,
        })
    }

    fn headers(&self) -> FieldTable {
        let mut headers = FieldTable::default();
        for (name, value) in self.texts() {
            headers.insert(name.into(), AMQPValue::LongString(value.into()));
        }
        headers.insert(RECEIVED_AT.into(), AMQPValue::LongLongInt(self.received_at_ms));
        headers
    }

    fn entry(&self, body: Map<String, Value>) -> HeldEntry {
        HeldEntry {
            app: self.app.to_owned(),
            sender: self.sender.to_owned(),
            recipient: self.recipient.to_owned(),
            message_id: self.message_id.to_owned(),
            received_at_ms: self.received_at_ms,
            plugin: self.plugin.to_owned(),
            reason: self.reason.to_owned(),
            body,
        }
    }
}

/// The body and headers of the held-queue entry for `held`, signed with `key`.
pub fn encode(held: &HeldMessage, key: &HeldKey) -> (Vec<u8>, FieldTable) {
    let (payload, mut headers) = unsigned(held);
    let signature = key.mac(&Fields::of(held), &payload).finalize().into_bytes();
    let signature = format!("sha256={}", hex::encode(signature));
    headers.insert(SIGNATURE.into(), AMQPValue::LongString(signature.as_str().into()));
    (payload, headers)
}

/// The body and headers of `held` without a signature (what a daemon without a key
/// dead-letters instead of holding).
pub fn unsigned(held: &HeldMessage) -> (Vec<u8>, FieldTable) {
    let payload = serde_json::to_vec(&held.message.body).expect("serialising a JSON map cannot fail");
    (payload, Fields::of(held).headers())
}

/// What an entry claims, unchecked: for listing only, never for delivery.
///
/// # Errors
/// When a header is missing or the body is not a JSON object.
pub fn read(headers: Option<&FieldTable>, payload: &[u8]) -> Result<HeldEntry, EntryError> {
    let empty = FieldTable::default();
    let fields = Fields::read(headers.unwrap_or(&empty))?;
    Ok(fields.entry(body(payload)?))
}

/// The entry, if `key` signed exactly these headers and body and its ids are routable ids of
/// `app` (checked again: a key may outlive a change of the rules).
///
/// # Errors
/// An [`EntryError`] saying what does not hold; the signature is compared in constant time.
pub fn verify(headers: Option<&FieldTable>, payload: &[u8], key: &HeldKey, app: &str) -> Result<HeldEntry, EntryError> {
    let empty = FieldTable::default();
    let headers = headers.unwrap_or(&empty);
    let signature = match headers.inner().get(SIGNATURE) {
        Some(AMQPValue::LongString(s)) => s.as_bytes(),
        None => return Err(EntryError::Unsigned),
        Some(_) => return Err(EntryError::Signature),
    };
    let signature = signature
        .strip_prefix(b"sha256=")
        .and_then(|hex_digits| hex::decode(hex_digits).ok())
        .ok_or(EntryError::Signature)?;
    let fields = Fields::read(headers)?;
    key.mac(&fields, payload).verify_slice(&signature).map_err(|_| EntryError::Signature)?;
    chat21::check_id("app", fields.app)?;
    if fields.app != app {
        return Err(EntryError::OtherApp(fields.app.to_owned()));
    }
    chat21::check_id("sender", fields.sender)?;
    chat21::check_id("recipient", fields.recipient)?;
    chat21::check_id("message", fields.message_id)?;
    Ok(fields.entry(body(payload)?))
}

/// The message id an entry's headers claim, unchecked: for selecting and reporting only.
pub fn claimed_id(headers: Option<&FieldTable>) -> Option<String> {
    match headers?.inner().get(MESSAGE_ID)? {
        AMQPValue::LongString(id) => Some(String::from_utf8_lossy(id.as_bytes()).into_owned()),
        AMQPValue::ShortString(id) => Some(id.as_str().to_owned()),
        _ => None,
    }
}

/// Header `name` as text (long or short string, UTF-8).
fn text<'a>(headers: &'a FieldTable, name: &str) -> Option<&'a str> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

fn body(payload: &[u8]) -> Result<Map<String, Value>, EntryError> {
    match serde_json::from_slice(payload) {
        Ok(Value::Object(body)) => Ok(body),
        _ => Err(EntryError::Body),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn held() -> HeldMessage {
        let body = json!({"text": "hi", "sender": "alice", "recipient": "bob"}).as_object().unwrap().clone();
        HeldMessage {
            message: Message {
                app: "tilechat".into(),
                sender: "alice".into(),
                recipient: "bob".into(),
                message_id: "m1".into(),
                body,
                received_at_ms: 1_700_000_000_000,
            },
            plugin: "moderation".into(),
            reason: "check".into(),
        }
    }

    fn key() -> HeldKey {
        HeldKey::new(SECRET).unwrap()
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(HeldKey::new(&SECRET[..31]).unwrap_err(), 31);
        assert!(HeldKey::new(SECRET).is_ok());
        assert_eq!(format!("{:?}", key()), "HeldKey(..)");
    }

    #[test]
    fn a_signed_entry_verifies_and_round_trips() {
        let (payload, headers) = encode(&held(), &key());
        let entry = verify(Some(&headers), &payload, &key(), "tilechat").unwrap();
        assert_eq!(entry.into_message(), held().message);
        assert_eq!(read(Some(&headers), &payload).unwrap().plugin, "moderation");
    }

    #[test]
    fn the_signed_bytes_are_format_v1() {
        // Entries outlive a daemon upgrade: what v1 signs must not move.
        let (_, headers) = encode(&held(), &key());
        let AMQPValue::LongString(signature) = &headers.inner()[SIGNATURE] else { panic!("{headers:?}") };
        assert_eq!(
            String::from_utf8_lossy(signature.as_bytes()),
            "sha256=939b6e5ec28768b613c30bd2a2671535b8dd1ac642e162fd962422553e4335b4"
        );
    }

    #[test]
    fn the_claimed_id_is_read_without_a_check() {
        let (_, headers) = unsigned(&held());
        assert_eq!(claimed_id(Some(&headers)).as_deref(), Some("m1"));
        let mut short = FieldTable::default();
        short.insert(MESSAGE_ID.into(), AMQPValue::ShortString("m2".into()));
        assert_eq!(claimed_id(Some(&short)).as_deref(), Some("m2"));
        assert_eq!(claimed_id(Some(&FieldTable::default())), None);
        assert_eq!(claimed_id(None), None);
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let (payload, headers) = encode(&held(), &key());
        let check = |headers: &FieldTable, payload: &[u8]| verify(Some(headers), payload, &key(), "tilechat");
        assert!(matches!(check(&headers, br#"{"text":"bye"}"#), Err(EntryError::Signature)));
        for (name, value) in [
            (SENDER, AMQPValue::LongString("mallory".into())),
            (RECIPIENT, AMQPValue::LongString("carol".into())),
            (MESSAGE_ID, AMQPValue::LongString("m2".into())),
            (REASON, AMQPValue::LongString("fine".into())),
            (RECEIVED_AT, AMQPValue::LongLongInt(1)),
        ] {
            let mut altered = headers.clone();
            altered.insert(name.into(), value);
            assert!(matches!(check(&altered, &payload), Err(EntryError::Signature)), "{name}");
        }
        let other = HeldKey::new(&SECRET.replace('0', "1")).unwrap();
        assert!(matches!(verify(Some(&headers), &payload, &other, "tilechat"), Err(EntryError::Signature)));
    }

    #[test]
    fn fields_cannot_be_shifted_into_each_other() {
        // "ab" + "c" and "a" + "bc" concatenate alike; the length prefixes tell them apart.
        let mut one = held();
        (one.message.sender, one.message.recipient) = ("ab".into(), "c".into());
        let mut two = held();
        (two.message.sender, two.message.recipient) = ("a".into(), "bc".into());
        let (payload, mut headers) = encode(&one, &key());
        let (_, moved) = unsigned(&two);
        for name in [SENDER, RECIPIENT] {
            headers.insert(name.into(), moved.inner()[name].clone());
        }
        assert!(matches!(verify(Some(&headers), &payload, &key(), "tilechat"), Err(EntryError::Signature)));
    }

    #[test]
    fn forged_and_invalid_entries_are_refused() {
        let (payload, headers) = unsigned(&held());
        assert!(matches!(verify(Some(&headers), &payload, &key(), "tilechat"), Err(EntryError::Unsigned)));
        assert!(matches!(verify(None, &payload, &key(), "tilechat"), Err(EntryError::Unsigned)));
        let mut garbage = headers.clone();
        garbage.insert(SIGNATURE.into(), AMQPValue::LongString("sha256=zz".into()));
        assert!(matches!(verify(Some(&garbage), &payload, &key(), "tilechat"), Err(EntryError::Signature)));

        let (payload, headers) = encode(&held(), &key());
        assert!(matches!(verify(Some(&headers), &payload, &key(), "other"), Err(EntryError::OtherApp(_))));
        let mut bad = held();
        bad.message.recipient = "bob.messages.x".into();
        let (payload, headers) = encode(&bad, &key());
        assert!(matches!(verify(Some(&headers), &payload, &key(), "tilechat"), Err(EntryError::Id(_))));

        let mut missing = FieldTable::default();
        missing.insert(SIGNATURE.into(), AMQPValue::LongString("sha256=00".into()));
        assert!(matches!(verify(Some(&missing), b"{}", &key(), "tilechat"), Err(EntryError::Header(_))));
        assert!(matches!(read(None, b"{}"), Err(EntryError::Header(_))));
    }
}
