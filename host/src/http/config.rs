//! The `[http]` section: where the operator and API listener is, and its bounds against slow
//! or greedy clients.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{ConfigError, in_range, invalid, millis};

/// How long one HTTP request may take to be answered unless `http.request_timeout_ms` says otherwise.
pub const DEFAULT_HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request head (also the idle time of a kept-alive
/// connection) unless `http.header_read_timeout_ms` says otherwise.
pub const DEFAULT_HTTP_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Open HTTP connections unless `http.max_connections` says otherwise; more wait to be accepted.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 256;
/// Longest request or header timeout accepted (ten minutes).
const MAX_HTTP_TIMEOUT_MS: u64 = 600_000;

/// The file format of `[http]` (env: `INBOXD_HTTP_<KEY>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp {
    address: String,
    request_timeout_ms: i64,
    header_read_timeout_ms: i64,
    max_connections: i64,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            address: "127.0.0.1:9464".into(),
            request_timeout_ms: DEFAULT_HTTP_REQUEST_TIMEOUT.as_millis() as i64,
            header_read_timeout_ms: DEFAULT_HTTP_HEADER_READ_TIMEOUT.as_millis() as i64,
            max_connections: DEFAULT_HTTP_MAX_CONNECTIONS as i64,
        }
    }
}

/// The operator HTTP listener (`[http]`) and its bounds against slow or greedy clients.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Where `/metrics`, `/healthz`, `/readyz` and the history API are served; `None` turns the
    /// listener off.
    pub address: Option<SocketAddr>,
    /// Longest time from a request's head to its answer; longer requests get 503.
    pub request_timeout: Duration,
    /// Longest time a client may take to send a request head, or stay idle between requests.
    pub header_read_timeout: Duration,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
}

/// Validates `[http]`; an empty address turns the listener off.
///
/// # Errors
/// A [`ConfigError`] naming the `http.*` key at fault.
pub fn validate(raw: &RawHttp) -> Result<HttpConfig, ConfigError> {
    let address = raw.address.trim();
    let address = if address.is_empty() {
        None
    } else {
        let parsed = address.parse().map_err(|_| {
            invalid("http.address", format!("{address:?} is not an ip:port address (empty turns the listener off)"))
        })?;
        Some(parsed)
    };
    Ok(HttpConfig {
        address,
        request_timeout: millis("http.request_timeout_ms", raw.request_timeout_ms, 1..=MAX_HTTP_TIMEOUT_MS)?,
        header_read_timeout: millis(
            "http.header_read_timeout_ms",
            raw.header_read_timeout_ms,
            1..=MAX_HTTP_TIMEOUT_MS,
        )?,
        max_connections: in_range("http.max_connections", raw.max_connections, 1..=65_536)?,
    })
}
