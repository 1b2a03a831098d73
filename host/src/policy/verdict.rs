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
    /// Decide later: a plugin could not run (its thread was not scheduled within its wall-clock
    /// ceiling, twice). Nothing is published; the delivery is requeued. Per copy it defers the
    /// whole message.
    Defer(Deferred),
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
    /// The body as the plugins before this one left it (protected fields re-applied), `None`
    /// if none modified it: the sender's FAILED copy shows what the chain made of the message,
    /// so text a redactor removed does not come back in it (nor in the sender's history).
    pub body: Option<Map<String, Value>>,
}

/// Why a policy parked a message, as shown to the moderator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The plugin that held it.
    pub plugin: String,
    /// The plugin's reason.
    pub reason: String,
    /// The body as the plugins before this one left it (protected fields re-applied), `None`
    /// if none modified it: what is parked, so a release delivers the chain's work.
    pub body: Option<Map<String, Value>>,
}

/// Which plugin could not run, so the message waits for a less loaded moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    pub plugin: String,
}
