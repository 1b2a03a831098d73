//! What routing asks of the store: the group directory (a fake in unit tests, the store's LRU in
//! the daemon) and the conversation an archive publishes.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::chat21::Group;

/// The stored groups of one app, as routing reads them.
pub trait GroupLookup: Send + Sync {
    /// The stored group `id`, if the server side ever announced it.
    ///
    /// # Errors
    /// [`GroupsUnavailable`] when the store could not say (the message must wait, not be
    /// routed as if the group did not exist).
    fn get(&self, id: &str) -> Result<Option<Arc<Group>>, GroupsUnavailable>;
    /// Takes note of a group announced on `groups.update` (it is persisted by the writer).
    /// Routing never calls it: whoever routed the announcement applies it
    /// ([`super::Router::apply`]).
    fn remember(&self, group: Group);
}

/// The store could not be read for a group that is not cached (down, or too slow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the group directory could not read the store")]
pub struct GroupsUnavailable;

/// What routing asks of the stored conversation lists: the conversation an archive publishes.
pub trait ConversationLookup: Send + Sync {
    /// `user`'s stored conversation with `conversation` (live or archived), as the history API
    /// answers it (the last message with `timelineOf`, `conversWith`, `is_new`, …).
    ///
    /// # Errors
    /// [`ConversationsUnavailable`] when the store could not say (the archive must wait).
    fn get(&self, user: &str, conversation: &str) -> Result<Option<Map<String, Value>>, ConversationsUnavailable>;
}

/// The store could not be read for a conversation (down, or too slow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the conversation lists could not be read")]
pub struct ConversationsUnavailable;
