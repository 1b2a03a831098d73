//! The chain's view of one plugin: what it is asked, what it answers and how it can fail.
//! The Wasm host implements [`Link`]; unit tests implement it with scripted fakes.

use std::fmt;

use thiserror::Error;

use crate::chat21::Message;

/// Which export the chain calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook<'a> {
    /// `on-message`: once per message, before fan-out.
    Message,
    /// `on-deliver`: once per inbox copy.
    Deliver { inbox_of: &'a str },
}

impl Hook<'_> {
    /// Stable lower-case name, a bounded metrics label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Hook::Message => "on-message",
            Hook::Deliver { .. } => "on-deliver",
        }
    }
}

/// Which hooks a plugin is called for (the operator's `hooks = [...]`; both by default).
/// Skipping a hook a plugin does not use saves a call per message or per inbox copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hooks {
    pub on_message: bool,
    pub on_deliver: bool,
}

impl Hooks {
    pub const BOTH: Hooks = Hooks { on_message: true, on_deliver: true };

    /// Whether `hook` is one of these.
    pub fn includes(self, hook: Hook<'_>) -> bool {
        match hook {
            Hook::Message => self.on_message,
            Hook::Deliver { .. } => self.on_deliver,
        }
    }
}

/// What a plugin is shown: the message as it stands, with its body already serialised
/// (once per pass through the chain, not once per plugin).
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub message: &'a Message,
    /// `message.body` as a JSON object.
    pub json: &'a str,
}

/// A plugin's answer before the chain interprets it; `Modify` is still untrusted JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Accept,
    Modify(String),
    Reject { code: String, reason: String, notify_sender: bool },
    Drop,
    Hold(String),
}

impl Decision {
    /// Stable lower-case name, a bounded metrics label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Accept => "accept",
            Decision::Modify(_) => "modify",
            Decision::Reject { .. } => "reject",
            Decision::Drop => "drop",
            Decision::Hold(_) => "hold",
        }
    }
}

/// The plugin gave no usable answer. Never a rejection: the failure mode decides (and for a
/// [`FailureKind::Ceiling`], nothing does: the message waits).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{kind}: {detail}")]
pub struct Failure {
    pub kind: FailureKind,
    pub detail: String,
}

impl Failure {
    /// The kind's label and the detail, as telemetry takes them.
    pub fn labels(&self) -> (&'static str, &str) {
        (self.kind.as_str(), &self.detail)
    }
}

/// Why a plugin gave no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The call used its whole CPU budget (`deadline_ms` of its thread's CPU time).
    Overran,
    /// The call reached its wall-clock ceiling with CPU budget left, twice: its thread was not
    /// scheduled (an overloaded host). Not the plugin's fault: no failure mode applies, the
    /// message is deferred (see [`crate::policy::Verdict::Defer`]).
    Ceiling,
    /// The instance hit its memory cap.
    OutOfMemory,
    /// The call used up its fuel.
    OutOfFuel,
    /// Any other trap: a guest panic, `unreachable`, a host-side limit.
    Trap,
    /// The plugin answered, but with something the host refuses (a `modify` that is not a JSON object).
    InvalidVerdict,
}

impl FailureKind {
    /// Stable lower-case name, a bounded metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Overran => "overran",
            FailureKind::Ceiling => "ceiling",
            FailureKind::OutOfMemory => "out-of-memory",
            FailureKind::OutOfFuel => "out-of-fuel",
            FailureKind::Trap => "trap",
            FailureKind::InvalidVerdict => "invalid-verdict",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the chain does when a plugin fails, chosen by the operator per plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Reject the message (code `plugin-failed`, the sender is notified).
    FailClosed,
    /// Skip the plugin, as if it had accepted.
    FailOpen,
}

impl FailureMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::FailClosed => "fail-closed",
            FailureMode::FailOpen => "fail-open",
        }
    }
}

/// One plugin in a chain. Calls must be bounded (deadline, memory) and must not panic.
pub trait Link: Send + Sync {
    /// The configured name, shown to senders in rejections and used as a metrics label.
    fn name(&self) -> &str;
    /// A short content hash of the plugin's code, for logs.
    fn digest(&self) -> &str;
    fn failure_mode(&self) -> FailureMode;
    /// The hooks the chain calls this plugin for; it accepts the others without a call.
    fn hooks(&self) -> Hooks {
        Hooks::BOTH
    }
    /// Asks the plugin about `subject`.
    ///
    /// # Errors
    /// A [`Failure`] when the plugin trapped, overran its CPU budget, ran out of memory or fuel,
    /// or could not run within its wall-clock ceiling.
    fn call(&self, hook: Hook<'_>, subject: Subject<'_>) -> Result<Decision, Failure>;
}
