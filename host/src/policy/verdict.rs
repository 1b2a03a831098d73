//! The outcomes a policy can give a message, in domain terms (already-parsed JSON).
//! The plugin host translates its WIT verdicts into these.

use serde_json::{Map, Value};

/// What happens to a message (or to one inbox copy of it).
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Deliver unchanged.
    Accept,
    /// Deliver this body instead; the protected fields are re-applied afterwards.
    Modify(Map<String, Value>),
    /// Refuse; with `notify_sender` the sender gets a FAILED copy saying why.
    Reject(Rejection),
    /// Refuse silently.
    Drop,
    /// Park the whole message for a moderator (only from `on_message`; per copy it counts as `Drop`).
    Hold(Held),
}

/// Why a policy refused a message, as shown to the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The plugin that refused it.
    pub plugin: String,
    /// A short machine-readable code, e.g. `rate-limited`.
    pub code: String,
    /// A human-readable reason.
    pub reason: String,
    pub notify_sender: bool,
}

/// Why a policy parked a message, as shown to the moderator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The plugin that held it.
    pub plugin: String,
    /// The plugin's reason.
    pub reason: String,
}
