//! The body of an inbox copy: its JSON and the text that goes on the wire and into the store,
//! serialised once and shared by every copy that carries the same body (a group's members).

use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Serialize, Serializer};
use serde_json::Value;

/// A JSON body and its serialisation; cloning shares both.
#[derive(Clone)]
pub struct Payload(Arc<Shared>);

struct Shared {
    json: Value,
    /// The serialisation, for the store; `bytes` is a view of the same allocation.
    text: Arc<str>,
    bytes: Bytes,
}

/// Lends a shared text's bytes to a [`Bytes`].
struct TextBytes(Arc<str>);

impl AsRef<[u8]> for TextBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Payload {
    /// Serialises `json` once.
    pub fn new(json: Value) -> Payload {
        // A `Value` has string keys only, which is all serde_json can fail on.
        let text: Arc<str> = serde_json::to_string(&json).expect("serialising a serde_json::Value cannot fail").into();
        let bytes = Bytes::from_owner(TextBytes(Arc::clone(&text)));
        Payload(Arc::new(Shared { json, text, bytes }))
    }

    /// The serialised JSON, shared (cloning it copies no bytes).
    pub fn bytes(&self) -> Bytes {
        self.0.bytes.clone()
    }

    /// The serialised JSON as text, shared: the same bytes as [`Payload::bytes`].
    pub fn text(&self) -> Arc<str> {
        Arc::clone(&self.0.text)
    }

    /// Whether `self` and `other` are one shared body (not merely equal ones).
    pub fn shares(&self, other: &Payload) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Reading a copy's fields is reading its JSON.
impl Deref for Payload {
    type Target = Value;

    fn deref(&self) -> &Value {
        &self.0.json
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.json.serialize(serializer)
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.0.json == other.0.json
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.json.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn bytes_are_the_json_and_clones_share_them() {
        let payload = Payload::new(json!({"text": "hi", "status": 150}));
        assert_eq!(serde_json::from_slice::<Value>(&payload.bytes()).unwrap(), *payload);
        let clone = payload.clone();
        assert!(clone.shares(&payload));
        assert_eq!(clone.bytes().as_ptr(), payload.bytes().as_ptr());
        assert_eq!(clone.text().as_ptr(), payload.bytes().as_ptr(), "the text is the bytes, not a copy");
        assert_eq!(payload["status"], 150);
        assert_eq!(json!({"data": payload}), json!({"data": {"text": "hi", "status": 150}}));
    }
}
