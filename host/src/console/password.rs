//! Console account passwords: Argon2id hashes in PHC strings (`$argon2id$v=19$...`), made by
//! `inboxd console hash-password` and checked at login. Only the hash is ever configured.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Bytes of random salt per hash (the PHC recommendation).
const SALT_BYTES: usize = 16;

/// The PHC string of `password` under a fresh random salt, with Argon2id's default cost.
///
/// # Errors
/// When the OS has no randomness to give, or hashing fails.
pub fn hash(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; SALT_BYTES];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness for the salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("encoding the salt: {e}"))?;
    let hashed =
        Argon2::default().hash_password(password.as_bytes(), &salt).map_err(|e| anyhow::anyhow!("hashing: {e}"))?;
    Ok(hashed.to_string())
}

/// Whether `phc` is a password hash this console can check.
pub fn parses(phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| hash.algorithm.as_str().starts_with("argon2"))
}

/// Whether `password` matches `phc`; a hash that does not parse matches nothing. Slow on
/// purpose (tens of milliseconds): call it off the async threads.
pub fn verify(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let phc = hash("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$") && parses(&phc));
        assert!(verify("correct horse", &phc));
        assert!(!verify("correct horse ", &phc));
        assert!(!verify("correct horse", "not a hash"));
        assert_ne!(hash("correct horse").unwrap(), phc, "every hash has its own salt");
        assert!(!parses("$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA"));
    }
}
