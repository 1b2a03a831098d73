//! The policy seam: what runs once per message before fan-out and once per inbox copy.
//! The pipeline applies verdicts; [`PolicyChain`] runs the chain's links (plugins) in order.

mod chain;
mod link;
mod verdict;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use chain::{PLUGIN_FAILED, PolicyChain};
pub use link::{Decision, Failure, FailureKind, FailureMode, Hook, Hooks, Link, Subject};
pub use verdict::{Deferred, Held, Rejection, Verdict};

use crate::chat21::Message;

/// Decides the fate of messages. Implementations must be bounded in time and must not panic.
pub trait Policy: Send + Sync {
    /// Once per chat message, after normalisation and before fan-out.
    fn on_message(&self, message: &Message) -> Verdict;
    /// Once per inbox copy of an accepted message; reject, drop and hold affect only that inbox.
    fn on_deliver(&self, message: &Message, inbox_of: &str) -> Verdict;
    /// [`Policy::on_deliver`] for every inbox of one message, in order; implementations may
    /// share work across the copies (the chain serialises the message once).
    fn on_deliver_each(&self, message: &Message, inboxes: &[&str]) -> Vec<Verdict> {
        inboxes.iter().map(|inbox_of| self.on_deliver(message, inbox_of)).collect()
    }
    /// True when every verdict is `Accept` without doing any work, so callers may skip
    /// moving the call off the async runtime.
    fn is_noop(&self) -> bool {
        false
    }
}

/// The empty chain: every message goes through as sent.
pub struct AcceptAll;

impl Policy for AcceptAll {
    fn on_message(&self, _message: &Message) -> Verdict {
        Verdict::Accept
    }

    fn on_deliver(&self, _message: &Message, _inbox_of: &str) -> Verdict {
        Verdict::Accept
    }

    fn is_noop(&self) -> bool {
        true
    }
}

/// The policy in force, shared by the pipeline and the reloader. A message takes one
/// [`PolicyHandle::current`] snapshot and uses it for `on_message` and every `on_deliver`,
/// so a reload never splits a message across two chains.
#[derive(Clone)]
pub struct PolicyHandle {
    live: Arc<ArcSwap<Arc<dyn Policy>>>,
}

impl PolicyHandle {
    pub fn new(policy: Arc<dyn Policy>) -> PolicyHandle {
        PolicyHandle { live: Arc::new(ArcSwap::from_pointee(policy)) }
    }

    /// The policy for the next message.
    pub fn current(&self) -> Arc<dyn Policy> {
        Arc::clone(&self.live.load())
    }

    /// Makes `policy` the one later messages get; messages in flight keep theirs.
    pub fn replace(&self, policy: Arc<dyn Policy>) {
        self.live.store(Arc::new(policy));
    }
}

impl From<Arc<dyn Policy>> for PolicyHandle {
    fn from(policy: Arc<dyn Policy>) -> PolicyHandle {
        PolicyHandle::new(policy)
    }
}

impl<P: Policy + 'static> From<Arc<P>> for PolicyHandle {
    fn from(policy: Arc<P>) -> PolicyHandle {
        PolicyHandle::new(policy)
    }
}
