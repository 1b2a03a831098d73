//! The `[held]` section: the key that signs held entries.

use serde::{Deserialize, Serialize};

use super::HeldKey;
use super::entry::MIN_SECRET_BYTES;
use crate::settings::{ConfigError, invalid};

/// The file format of `[held]` (env: `INBOXD_HELD_SECRET`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHeld {
    secret: String,
}

/// Held messages (`[held]`).
#[derive(Debug, Clone)]
pub struct HeldConfig {
    /// Signs held entries in the daemon and verifies them on `inboxd held release`. `None`
    /// (no secret): the daemon dead-letters what a plugin holds, and release refuses to run.
    pub key: Option<HeldKey>,
}

/// Validates `[held]`.
///
/// # Errors
/// A [`ConfigError`] naming `held.secret` when it is set but short.
pub fn validate(raw: RawHeld) -> Result<HeldConfig, ConfigError> {
    if raw.secret.is_empty() {
        return Ok(HeldConfig { key: None });
    }
    let key = HeldKey::new(&raw.secret).map_err(|len| {
        invalid("held.secret", format!("is {len} bytes; use at least {MIN_SECRET_BYTES} random bytes"))
    })?;
    Ok(HeldConfig { key: Some(key) })
}
