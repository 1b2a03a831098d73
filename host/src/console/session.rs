//! Console sessions: a random token in an `HttpOnly`, `SameSite=Strict` cookie names a
//! logged-in account, its role and its CSRF token, until it expires or logs out. In memory,
//! bounded: a restart logs everyone out.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header::COOKIE;

use super::config::Role;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "inboxd_console";
/// Sessions open at once; logging in past it ends the oldest.
pub const MAX_SESSIONS: usize = 1024;
/// Random bytes of a session or CSRF token (hex-encoded in the cookie and header).
const TOKEN_BYTES: usize = 32;

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// Sent back by the page in the CSRF header with every action.
    pub csrf: String,
    expires: Instant,
}

/// The open sessions.
#[derive(Debug)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
    ttl: Duration,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions { open: Mutex::new(HashMap::new()), ttl }
    }

    /// Opens a session for `user`; returns its cookie token.
    ///
    /// # Errors
    /// When the OS has no randomness to give.
    pub fn open(&self, user: &str, role: Role, now: Instant) -> Result<String, getrandom::Error> {
        let (token, csrf) = (random_token()?, random_token()?);
        let session = Session { user: user.to_owned(), role, csrf, expires: now + self.ttl };
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|_, s| s.expires > now);
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open.iter().min_by_key(|(_, s)| s.expires).map(|(t, _)| t.clone())
        {
            open.remove(&oldest);
        }
        open.insert(token.clone(), session);
        Ok(token)
    }

    /// The live session `token` names.
    pub fn get(&self, token: &str, now: Instant) -> Option<Session> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        match open.get(token) {
            Some(session) if session.expires > now => Some(session.clone()),
            Some(_) => {
                open.remove(token);
                None
            }
            None => None,
        }
    }

    /// Ends the session `token` names.
    pub fn close(&self, token: &str) {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).remove(token);
    }

    /// The `Set-Cookie` value that carries `token` for this session's lifetime.
    pub fn cookie(&self, token: &str) -> String {
        format!("{COOKIE_NAME}={token}; Path=/console; Max-Age={}; HttpOnly; SameSite=Strict", self.ttl.as_secs())
    }
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn expired_cookie() -> String {
    format!("{COOKIE_NAME}=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict")
}

/// The session token in the request's cookies, if any.
pub fn token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='))
        .filter(|token| !token.is_empty())
}

fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn a_session_lives_until_it_expires_or_closes() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let now = Instant::now();
        let token = sessions.open("ann", Role::Moderator, now).unwrap();
        assert_eq!(token.len(), 64);
        let session = sessions.get(&token, now).unwrap();
        assert_eq!((session.user.as_str(), session.role), ("ann", Role::Moderator));
        assert_ne!(session.csrf, token);
        assert!(sessions.get(&token, now + Duration::from_secs(61)).is_none(), "expired");
        assert!(sessions.get(&token, now).is_none(), "an expired session is forgotten");
        let token = sessions.open("ann", Role::Viewer, now).unwrap();
        sessions.close(&token);
        assert!(sessions.get(&token, now).is_none());
        assert!(sessions.get("guess", now).is_none());
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let start = Instant::now();
        let first = sessions.open("a", Role::Viewer, start).unwrap();
        for i in 1..=MAX_SESSIONS {
            sessions.open("a", Role::Viewer, start + Duration::from_millis(i as u64)).unwrap();
        }
        assert!(sessions.get(&first, start).is_none(), "the oldest made room");
        assert_eq!(sessions.open.lock().unwrap().len(), MAX_SESSIONS);
    }

    #[test]
    fn the_cookie_is_found_among_others_and_is_strict() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_static("a=1; inboxd_console=abc; b=2"));
        assert_eq!(token(&headers), Some("abc"));
        headers.insert(COOKIE, HeaderValue::from_static("inboxd_console_x=1; inboxd_console="));
        assert_eq!(token(&headers), None);
        let cookie = Sessions::new(Duration::from_secs(5)).cookie("t");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/console"));
    }
}
