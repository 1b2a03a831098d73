//! The `[store]` section: where history, conversations and groups are kept, and how many
//! stored groups routing keeps in memory.

use serde::{Deserialize, Serialize};

use super::StoreUrl;
use super::groups::DEFAULT_GROUP_CACHE;
use crate::settings::{ConfigError, in_range, invalid};

/// The embedded history store, relative to the working directory (the data dir under systemd).
pub const DEFAULT_STORE_URL: &str = "sqlite://inboxd.db";
/// Most groups `[store] group_cache` may keep in memory.
const MAX_GROUP_CACHE: usize = 10_000_000;

/// The file format of `[store]` (env: `INBOXD_STORE_<KEY>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    url: String,
    group_cache: i64,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore { url: DEFAULT_STORE_URL.into(), group_cache: DEFAULT_GROUP_CACHE as i64 }
    }
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Where history, conversations and groups are kept (`none`: nothing is).
    pub url: StoreUrl,
    /// Stored groups routing keeps in memory (an LRU over the store).
    pub group_cache: usize,
}

/// Validates `[store]`.
///
/// # Errors
/// A [`ConfigError`] naming the `store.*` key at fault.
pub fn validate(raw: RawStore) -> Result<StoreConfig, ConfigError> {
    Ok(StoreConfig {
        url: raw.url.parse().map_err(|message: String| invalid("store.url", message))?,
        group_cache: in_range("store.group_cache", raw.group_cache, 1..=MAX_GROUP_CACHE)?,
    })
}
