//! CSRF protection of console actions: every request that changes something carries the
//! session's CSRF token in the `X-CSRF-Token` header, compared in constant time. The session
//! cookie is `SameSite=Strict` too; the token is what a forged cross-site request cannot know.

use axum::http::HeaderMap;

/// The header that carries the token.
pub const HEADER: &str = "x-csrf-token";

/// Whether `headers` carry `expected` in [`HEADER`].
pub fn carried(headers: &HeaderMap, expected: &str) -> bool {
    let given = headers.get(HEADER).map(|value| value.as_bytes()).unwrap_or_default();
    !expected.is_empty() && same(given, expected.as_bytes())
}

/// Equal, in a time that depends only on the lengths.
fn same(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn only_the_exact_token_passes() {
        let mut headers = HeaderMap::new();
        assert!(!carried(&headers, "tok"), "no header");
        headers.insert(HEADER, HeaderValue::from_static("tok"));
        assert!(carried(&headers, "tok"));
        assert!(!carried(&headers, "tok2") && !carried(&headers, "to") && !carried(&headers, "tOk"));
        headers.insert(HEADER, HeaderValue::from_static(""));
        assert!(!carried(&headers, ""), "an empty expected token never passes")
    }
}
