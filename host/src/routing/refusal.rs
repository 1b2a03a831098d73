//! Why a delivery goes to the dead-letter queue: input inboxd refuses, or a panic caught while
//! handling it. A bug one input triggers costs that delivery, never the session.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

use crate::chat21::InputError;

/// The dead-letter reason of a delivery inboxd panicked on (a bug, not the sender's fault).
pub const INTERNAL_ERROR: &str = "internal-error";

/// A delivery that is dead-lettered instead of routed.
#[derive(Debug)]
pub enum Refusal {
    Input(InputError),
    /// Handling it panicked; the panic's message.
    Panicked(String),
}

impl Refusal {
    /// The `x-inboxd-reason` code.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Input(err) => err.code(),
            Refusal::Panicked(_) => INTERNAL_ERROR,
        }
    }

    /// The `x-inboxd-error` text.
    pub fn text(&self) -> String {
        match self {
            Refusal::Input(err) => err.to_string(),
            Refusal::Panicked(message) => format!("inboxd failed on this delivery: {message}"),
        }
    }
}

impl From<InputError> for Refusal {
    fn from(err: InputError) -> Refusal {
        Refusal::Input(err)
    }
}

/// Runs `handle` on one delivery, turning a panic into [`Refusal::Panicked`]. Otherwise the
/// session would end, the broker would redeliver the delivery to the next session, and that
/// would panic too: every conversation stalled by one input.
///
/// Unwind safety: what `handle` shares (the policy handle, the group directory) sits behind
/// locks that recover from poisoning, and nothing it half-built outlives the panic.
pub fn guarded<T>(handle: impl FnOnce() -> Result<T, InputError>) -> Result<T, Refusal> {
    match panic::catch_unwind(AssertUnwindSafe(handle)) {
        Ok(handled) => handled.map_err(Refusal::Input),
        Err(panic) => Err(Refusal::Panicked(panic_message(panic.as_ref()))),
    }
}

/// The text a panic was raised with (`panic!` gives a `&str` or a `String`).
fn panic_message(panic: &(dyn Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => (*text).to_owned(),
        (None, Some(text)) => text.clone(),
        (None, None) => "a panic without a message".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_internal_error_with_its_message() {
        let refusal = guarded::<()>(|| panic!("bug {}", 42)).unwrap_err();
        assert_eq!(
            (refusal.code(), refusal.text().as_str()),
            ("internal-error", "inboxd failed on this delivery: bug 42")
        );
        let refusal = guarded::<()>(|| Err(InputError::NotAnObject)).unwrap_err();
        assert_eq!(refusal.code(), "not-an-object");
        assert_eq!(guarded(|| Ok(7)).unwrap(), 7);
    }
}
