//! How a webhook endpoint URL is shown in logs, errors and listings: scheme, host and port,
//! never the path, query or user info, which carry tokens in real deployments.

use axum::http::Uri;
use sha2::{Digest, Sha256};

/// Hex digits of the path's SHA-256 shown in place of the path: enough to tell an app's
/// endpoints apart, far too few to recover or confirm a token.
const PATH_FINGERPRINT_HEX: usize = 8;

/// `url` with everything after the authority replaced by a short fingerprint, e.g.
/// `http://tiledesk:3000/<redacted:1a2b3c4d>`; user info is dropped. The one way a webhook
/// URL is shown anywhere (logs, `inboxd webhooks dead`, config errors).
pub fn redact(url: &str) -> String {
    let Ok(uri) = url.parse::<Uri>() else { return "<unparseable URL, redacted>".to_owned() };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return "<URL without scheme or host, redacted>".to_owned();
    };
    let host = match authority.port_u16() {
        Some(port) => format!("{}:{port}", authority.host()),
        None => authority.host().to_owned(),
    };
    let rest = uri.path_and_query().map_or("", |p| p.as_str());
    if rest.is_empty() || rest == "/" {
        return format!("{scheme}://{host}/");
    }
    let digest = hex::encode(Sha256::digest(rest.as_bytes()));
    format!("{scheme}://{host}/<redacted:{}>", &digest[..PATH_FINGERPRINT_HEX])
}

/// A webhook attempt failed (`dead`: its last one), reported with the endpoint redacted.
pub fn failed(event: &str, endpoint: &str, error: &str, dead: bool) {
    crate::telemetry::webhook_failed(event, &redact(endpoint), error, dead);
}

/// The endpoint answered an event with a final 4xx, reported with the endpoint redacted.
pub fn rejected(event: &str, endpoint: &str, status: u16) {
    crate::telemetry::webhook_rejected(event, &redact(endpoint), status);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_scheme_host_and_port_are_shown() {
        let shown = redact("http://tiledesk:3000/chat21/requests/tok-3f9a71c2e0b44d55");
        assert!(shown.starts_with("http://tiledesk:3000/<redacted:"), "{shown}");
        assert!(!shown.contains("tok-") && !shown.contains("chat21"), "{shown}");
        assert_eq!(shown, redact("http://tiledesk:3000/chat21/requests/tok-3f9a71c2e0b44d55"), "stable");
        assert_ne!(shown, redact("http://tiledesk:3000/chat21/requests/other"), "endpoints stay apart");
        assert_eq!(redact("http://hooks.example"), "http://hooks.example/");
        assert_eq!(redact("http://127.0.0.1:8080/"), "http://127.0.0.1:8080/");
    }

    #[test]
    fn query_and_user_info_are_hidden_too() {
        let shown = redact("http://bot:s3cr3t@hooks.example/h?token=abc");
        assert!(shown.starts_with("http://hooks.example/<redacted:"), "{shown}");
        assert!(!shown.contains("s3cr3t") && !shown.contains("bot") && !shown.contains("abc"), "{shown}");
        let shown = redact("http://hooks.example?token=abc");
        assert!(!shown.contains("abc"), "{shown}");
    }

    #[test]
    fn webhook_failures_are_logged_redacted() {
        let logged = crate::telemetry::captured(|| {
            for dead in [false, true] {
                failed("message-sent", "http://hooks.example:81/h/tok3n", "answered 500", dead);
            }
        });
        assert_eq!(logged.matches("http://hooks.example:81/<redacted:").count(), 2, "{logged}");
        assert!(!logged.contains("tok3n"), "{logged}");
    }

    #[test]
    fn what_does_not_parse_is_not_echoed() {
        for url in ["not a url with a tok3n", "/relative/tok3n", "http://[::1/tok3n"] {
            assert!(!redact(url).contains("tok3n"), "{url}: {}", redact(url));
        }
    }
}
