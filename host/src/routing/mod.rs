//! Routing: who receives a message and in which form (the pure router lives here).

mod config;

pub use config::{
    DEFAULT_MAX_INLINE_MEMBERS, MAX_INLINE_MEMBERS_LIMIT, RawRouting, RoutingConfig, UnknownGroups, validate,
};
