//! The policy seam: what runs once per message before fan-out and once per inbox copy.
//! The pipeline applies verdicts; the Wasm plugin chain is one implementation of [`Policy`].

mod verdict;

pub use verdict::{Rejection, Verdict};

use crate::chat21::Message;

/// Decides the fate of messages. Implementations must be cheap and must not block.
pub trait Policy: Send + Sync {
    /// Once per chat message, after normalisation and before fan-out.
    fn on_message(&self, message: &Message) -> Verdict;
    /// Once per inbox copy of an accepted message; reject and drop affect only that inbox.
    fn on_deliver(&self, message: &Message, inbox_of: &str) -> Verdict;
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
}
