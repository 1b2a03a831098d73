//! Why an inbound delivery cannot be processed: each variant is a dead-letter reason.
//! The reason code goes into the dead-letter header; the Display text into the log.

use thiserror::Error;

/// Input that inboxd refuses. Such a delivery is dead-lettered, never silently dropped.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InputError {
    /// The routing key matches no row of the protocol table.
    #[error("unknown routing key {0:?}")]
    UnknownTopic(String),
    /// The routing key belongs to another app than the one this daemon serves.
    #[error("routing key is for app {found:?}, this daemon serves {expected:?}")]
    WrongApp { expected: String, found: String },
    /// An id (user, conversation, group, message) that would break topic routing.
    #[error("{what} id {id:?} is empty or contains one of . / + * # or whitespace")]
    InvalidId { what: &'static str, id: String },
    /// The body is larger than the configured limit.
    #[error("body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// The body is not valid UTF-8 JSON.
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    /// The body is JSON but not an object.
    #[error("body is JSON but not an object")]
    NotAnObject,
    /// A field the event needs is missing or has the wrong type.
    #[error("field {field:?} is missing or not {expected}")]
    BadField { field: &'static str, expected: &'static str },
    /// Ids so long that a routing key inboxd derives from them would not fit AMQP.
    #[error("ids too long: the routing key of the {what} would be {bytes} bytes, over AMQP's 255")]
    IdTooLong { what: &'static str, bytes: usize },
    /// A message lists more inline `group.members` than the configured limit.
    #[error("group.members lists {count} members, over the limit of {limit}")]
    TooManyMembers { count: usize, limit: usize },
}

impl InputError {
    /// A short, stable reason code for headers and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            InputError::UnknownTopic(_) => "unknown-topic",
            InputError::WrongApp { .. } => "wrong-app",
            InputError::InvalidId { .. } => "invalid-id",
            InputError::TooLarge { .. } => "too-large",
            InputError::InvalidJson(_) => "invalid-json",
            InputError::NotAnObject => "not-an-object",
            InputError::BadField { .. } => "bad-field",
            InputError::IdTooLong { .. } => "id-too-long",
            InputError::TooManyMembers { .. } => "too-many-members",
        }
    }
}
