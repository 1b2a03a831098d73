//! The chat21 wire protocol: routing keys, message bodies and the inbox copies they fan out to.
//! Pure parsing and formatting, no I/O; the pipeline decides what to do with the results.

mod error;
mod inbound;
mod inbox;
mod message;
mod status;
mod topic;

pub use error::InputError;
pub use inbound::{Inbound, Limits};
pub use inbox::{
    InboxCopy, archive_copies, conversation_update_copy, direct_copies, failed_copy, group_copies, group_update_copies,
    read_receipt_copy,
};
pub use message::{Message, normalise};
pub use status::Status;
pub use topic::{EventKind, Topic, binding_keys, check_id};
