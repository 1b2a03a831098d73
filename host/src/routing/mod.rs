//! The pure router: an inbound event becomes a typed [`Routed`] result (the event, the exact
//! inbox copies to publish, a held message, the outcome), with the policy consulted once per
//! message and once per copy. No I/O and no clock: the caller passes the new message's id and
//! time in ([`Stamp`]) and applies what the result announces (a group update to the directory).
//!
//! Also why a delivery is refused ([`Refusal`], dead-lettered) and what routing asks of the
//! group directory ([`GroupLookup`]; the store implements it), and its `[routing]` section.

mod config;
mod lookup;
#[cfg(test)]
mod published_keys;
mod refusal;
mod route;

pub use config::{
    DEFAULT_MAX_INLINE_MEMBERS, MAX_INLINE_MEMBERS_LIMIT, RawRouting, RoutingConfig, UnknownGroups, validate,
};
pub use lookup::{ConversationLookup, ConversationsUnavailable, GroupLookup, GroupsUnavailable};
pub use refusal::{INTERNAL_ERROR, Refusal, guarded};
pub use route::{CONVERSATIONS, DIRECTORY, Event, NOT_A_MEMBER, Outcome, Routed, Router, Stamp, UNKNOWN_GROUP};
