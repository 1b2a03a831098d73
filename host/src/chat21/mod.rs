//! The chat21 wire protocol and its domain types: routing keys, message bodies, groups, held
//! messages and the inbox copies they fan out to. Pure parsing and formatting, no I/O; routing
//! decides what to do with the results.

mod delivered;
pub mod env;
mod error;
mod group;
mod inbound;
mod inbox;
pub mod key;
mod message;
mod payload;
mod status;
mod topic;

pub use delivered::delivered_copy;
pub use error::InputError;
pub use group::{Group, GroupUpdate};
pub use inbound::{Inbound, Limits};
pub use inbox::{
    ARCHIVE_KEYS, InboxCopy, StatusBody, archive_copies, conversation_update_copy, direct_copies, failed_copy,
    group_copies, group_update_copies, message_copy, message_payload, read_receipt_copy,
};
pub use message::{HeldMessage, MAX_CLIENT_CLOCK_SKEW_MS, Message, is_group, listed_members, normalise};
pub use payload::Payload;
pub use status::Status;
pub use topic::{EventKind, Topic, binding_keys, check_id};
