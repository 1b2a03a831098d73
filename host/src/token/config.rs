//! The `[auth]` section: the broker's HS256 key that user tokens are signed and verified with,
//! and the shape of the tokens `inboxd token` mints.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ClientIds;
use crate::settings::{ConfigError, in_range, invalid};

/// Shortest `[auth] secret` accepted (RFC 7518 §3.2: an HS256 key has at least 256 bits); a
/// short secret can be guessed offline from any one token.
pub const MIN_AUTH_SECRET_BYTES: usize = 32;
/// Longest token lifetime accepted (a year).
const MAX_TTL_SECS: u64 = 366 * 86_400;

/// The file format of `[auth]` (env: `INBOXD_AUTH_<KEY>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    secret: String,
    key_id: String,
    resource_server_id: String,
    client_ids: String,
    ttl_secs: i64,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            secret: String::new(),
            key_id: String::new(),
            resource_server_id: "rabbitmq".into(),
            client_ids: "any".into(),
            ttl_secs: 3600,
        }
    }
}

/// How `inboxd token` signs user tokens: the broker's oauth2 HS256 key.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The HS256 secret shared with RabbitMQ's `rabbitmq_auth_backend_oauth2` (empty: no tokens).
    pub secret: String,
    /// The `kid` header (empty: none, the broker's default key is used).
    pub key_id: String,
    /// RabbitMQ's `resource_server_id`: the audience and the scope prefix.
    pub resource_server_id: String,
    pub client_ids: ClientIds,
    pub ttl: Duration,
}

/// Validates `[auth]`.
///
/// # Errors
/// A [`ConfigError`] naming the `auth.*` key at fault.
pub fn validate(raw: RawAuth) -> Result<AuthConfig, ConfigError> {
    let client_ids = match raw.client_ids.as_str() {
        "any" => ClientIds::Any,
        "prefix" => ClientIds::Prefix,
        "exact" => ClientIds::Exact,
        _ => return Err(invalid("auth.client_ids", "must be `any` (chat21-compatible), `prefix` or `exact` (strict)")),
    };
    if raw.resource_server_id.is_empty() {
        return Err(invalid("auth.resource_server_id", "must not be empty"));
    }
    if !raw.secret.is_empty() && raw.secret.len() < MIN_AUTH_SECRET_BYTES {
        let message = format!(
            "is {} bytes; an HS256 key needs at least {MIN_AUTH_SECRET_BYTES} (e.g. `openssl rand -hex 32`), \
             and the broker's oauth2 key must be the same",
            raw.secret.len()
        );
        return Err(invalid("auth.secret", message));
    }
    Ok(AuthConfig {
        secret: raw.secret,
        key_id: raw.key_id,
        resource_server_id: raw.resource_server_id,
        client_ids,
        ttl: Duration::from_secs(in_range("auth.ttl_secs", raw.ttl_secs, 1..=MAX_TTL_SECS)?),
    })
}
