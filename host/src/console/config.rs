//! The `[console]` section: whether the moderation console is served, who may log in (names,
//! Argon2 password hashes, roles), how long a session lasts and what the console keeps.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::password;
use crate::settings::{ConfigError, in_range, invalid};

/// How long a console session lasts unless `console.session_ttl_secs` says otherwise.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Recent refusals kept in memory unless `console.recent_refusals` says otherwise.
pub const DEFAULT_RECENT_REFUSALS: usize = 200;

/// The file format of `[console]` (env: `INBOXD_CONSOLE_<KEY>`, except `accounts`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConsole {
    enabled: bool,
    accounts: Vec<RawAccount>,
    session_ttl_secs: i64,
    recent_refusals: i64,
    refusal_bodies: bool,
}

impl Default for RawConsole {
    fn default() -> Self {
        RawConsole {
            enabled: false,
            accounts: Vec::new(),
            session_ttl_secs: DEFAULT_SESSION_TTL.as_secs() as i64,
            recent_refusals: DEFAULT_RECENT_REFUSALS as i64,
            refusal_bodies: false,
        }
    }
}

/// One `[[console.accounts]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccount {
    name: String,
    /// A PHC string from `inboxd console hash-password` (`$argon2id$v=19$...`).
    password_hash: String,
    role: String,
}

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees every page; changes nothing.
    Viewer,
    /// Also releases, discards, replays and reloads.
    Moderator,
}

/// A configured console account.
#[derive(Clone)]
pub struct Account {
    pub name: String,
    /// The Argon2 PHC string, checked at load to parse.
    pub password_hash: String,
    pub role: Role,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

/// The moderation console (`[console]`).
#[derive(Debug, Clone, Default)]
pub struct ConsoleConfig {
    /// Served under `/console` on the HTTP listener; off by default.
    pub enabled: bool,
    pub accounts: Vec<Account>,
    /// A session ends this long after login (then the moderator logs in again).
    pub session_ttl: Duration,
    /// Rejected and dropped messages remembered for the console (0 when it is off).
    pub recent_refusals: usize,
    /// Whether those keep their bodies (off: only who, when, which plugin and code).
    pub refusal_bodies: bool,
}

/// Validates `[console]`: when enabled, at least one account, unique names, known roles and
/// hashes that parse.
///
/// # Errors
/// A [`ConfigError`] naming the `console.*` key at fault (never echoing a hash).
pub fn validate(raw: RawConsole) -> Result<ConsoleConfig, ConfigError> {
    let session_ttl = Duration::from_secs(in_range("console.session_ttl_secs", raw.session_ttl_secs, 60..=2_592_000)?);
    let recent_refusals = in_range("console.recent_refusals", raw.recent_refusals, 0..=100_000)?;
    let mut accounts: Vec<Account> = Vec::with_capacity(raw.accounts.len());
    for (i, account) in raw.accounts.into_iter().enumerate() {
        let at = |field: &str, message: &str| invalid("console.accounts", format!("entry {i}, `{field}`: {message}"));
        let name = account.name.trim().to_owned();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(at("name", "must be 1 to 64 printable characters"));
        }
        if accounts.iter().any(|a| a.name == name) {
            return Err(at("name", &format!("{name:?} is used twice")));
        }
        let role = match account.role.as_str() {
            "viewer" => Role::Viewer,
            "moderator" => Role::Moderator,
            _ => return Err(at("role", "must be `viewer` or `moderator`")),
        };
        if !password::parses(&account.password_hash) {
            return Err(at(
                "password_hash",
                "is not an Argon2 PHC string (make one with `inboxd console hash-password`)",
            ));
        }
        accounts.push(Account { name, password_hash: account.password_hash, role });
    }
    if raw.enabled && accounts.is_empty() {
        return Err(invalid("console.accounts", "the console is enabled but has no account"));
    }
    Ok(ConsoleConfig {
        enabled: raw.enabled,
        accounts,
        session_ttl,
        recent_refusals: if raw.enabled { recent_refusals } else { 0 },
        refusal_bodies: raw.refusal_bodies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<ConsoleConfig, ConfigError> {
        validate(toml::from_str(text).expect("a [console] table"))
    }

    #[test]
    fn off_by_default_and_accounts_checked_when_on() {
        let off = load("").unwrap();
        assert!(!off.enabled && off.accounts.is_empty() && off.recent_refusals == 0);
        let err = load("enabled = true").unwrap_err().to_string();
        assert!(err.contains("console.accounts") && err.contains("no account"), "{err}");
        let hash = password::hash("pw").unwrap();
        let account = |name: &str, role: &str, hash: &str| {
            format!("[[accounts]]\nname = {name:?}\nrole = {role:?}\npassword_hash = {hash:?}\n")
        };
        let on =
            load(&format!("enabled = true\n{}{}", account("ann", "moderator", &hash), account("bo", "viewer", &hash)))
                .unwrap();
        assert_eq!(
            on.accounts.iter().map(|a| (a.name.as_str(), a.role)).collect::<Vec<_>>(),
            [("ann", Role::Moderator), ("bo", Role::Viewer)]
        );
        assert_eq!((on.recent_refusals, on.session_ttl), (DEFAULT_RECENT_REFUSALS, DEFAULT_SESSION_TTL));
        let twice = load(&format!("{}{}", account("ann", "viewer", &hash), account("ann", "viewer", &hash)));
        assert!(twice.unwrap_err().to_string().contains("used twice"));
        let role = load(&account("ann", "admin", &hash)).unwrap_err().to_string();
        assert!(role.contains("`role`"), "{role}");
        let plain = load(&account("ann", "viewer", "hunter2")).unwrap_err().to_string();
        assert!(plain.contains("password_hash") && !plain.contains("hunter2"), "{plain}");
        assert!(load("session_ttl_secs = 1").unwrap_err().to_string().contains("console.session_ttl_secs"));
        assert!(format!("{:?}", on.accounts[0]).find("argon2").is_none(), "Debug never shows a hash");
    }
}
