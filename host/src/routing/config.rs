//! The `[routing]` section: who may address whom through group messages.

use serde::{Deserialize, Serialize};

use crate::chat21::check_id;
use crate::settings::{ConfigError, in_range, invalid};

/// Most ids a message may list in inline `group.members` unless `routing.max_inline_members`
/// says otherwise: far above a chat21/Tiledesk group (a support group is a handful of agents,
/// a bot and the requester), far below what makes one publish a flood.
pub const DEFAULT_MAX_INLINE_MEMBERS: usize = 1000;
/// Upper bound of `routing.max_inline_members` (a 256 KiB body holds about 20,000 short ids).
pub const MAX_INLINE_MEMBERS_LIMIT: usize = 100_000;

/// The file format of `[routing]` (env: `INBOXD_ROUTING_<KEY>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRouting {
    trusted_senders: Vec<String>,
    max_inline_members: i64,
    unknown_groups: String,
}

impl Default for RawRouting {
    fn default() -> Self {
        RawRouting {
            trusted_senders: vec!["system".into()],
            max_inline_members: DEFAULT_MAX_INLINE_MEMBERS as i64,
            unknown_groups: "refuse".into(),
        }
    }
}

/// Who may address whom through group messages (`[routing]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingConfig {
    /// Server-side senders (chat21-http-server's `system`, a Tiledesk bot account): their inline
    /// `group.members` are honoured for groups inboxd does not know, and they may post into
    /// stored groups they are not members of. Never a stored group's members list, though.
    pub trusted_senders: Vec<String>,
    /// Most ids a message or a `groups.update` may list in `group.members`, whoever sends it
    /// (a longer list is dead-lettered, `too-many-members`, before any member is looked at),
    /// and most members a group may have after a history-API change (refused with 405).
    pub max_inline_members: usize,
    pub unknown_groups: UnknownGroups,
}

impl RoutingConfig {
    pub fn is_trusted(&self, sender: &str) -> bool {
        self.trusted_senders.iter().any(|trusted| trusted == sender)
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            trusted_senders: vec!["system".into()],
            max_inline_members: DEFAULT_MAX_INLINE_MEMBERS,
            unknown_groups: UnknownGroups::Refuse,
        }
    }
}

/// What a group message to a group inboxd has no record of does, from an untrusted sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownGroups {
    /// The sender gets a FAILED copy (`unknown-group`); nobody else gets anything.
    Refuse,
    /// chat21's transient group: the inline `group.members` (from anyone), the sender and
    /// the group's timeline get it.
    Transient,
}

/// Validates `[routing]`.
///
/// # Errors
/// A [`ConfigError`] naming the `routing.*` key at fault.
pub fn validate(raw: RawRouting) -> Result<RoutingConfig, ConfigError> {
    for sender in &raw.trusted_senders {
        check_id("user", sender).map_err(|e| invalid("routing.trusted_senders", e.to_string()))?;
    }
    let unknown_groups = match raw.unknown_groups.as_str() {
        "refuse" => UnknownGroups::Refuse,
        "transient" => UnknownGroups::Transient,
        _ => return Err(invalid("routing.unknown_groups", "must be `refuse` or `transient`")),
    };
    Ok(RoutingConfig {
        trusted_senders: raw.trusted_senders,
        max_inline_members: in_range(
            "routing.max_inline_members",
            raw.max_inline_members,
            1..=MAX_INLINE_MEMBERS_LIMIT,
        )?,
        unknown_groups,
    })
}
