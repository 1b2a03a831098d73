//! HS256 JWTs for chat21 users as RabbitMQ 3.10's oauth2 backend expects them (the claims and
//! scopes of `shared/tools/mint-jwt`): a user may write only its own topics and read only its inbox.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use inboxd::token::{self, TokenRequest};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

/// Resource server id of the private node: the `aud` of every token and the prefix of every scope.
pub const RESOURCE_SERVER_ID: &str = "rabbitmq";

/// Key id of the node's HS256 signing key (also its `default_key`).
pub const JWT_KID: &str = "inboxd-test-key";

/// Default token lifetime, as mint-jwt's `--ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// How far in the past an expired token's `exp` lies: RabbitMQ allows no leeway, this is margin.
const EXPIRED_BY: Duration = Duration::from_secs(120);

/// Appended to the secret for a token that must fail signature verification.
const BAD_SECRET_SUFFIX: &str = "-not-the-real-secret";

pub use inboxd::token::ClientIds;

/// How to mint a token; the default is a valid token for any client id, valid for an hour.
#[derive(Clone, Debug)]
pub struct TokenOptions {
    /// Which client ids the queue scopes allow.
    pub client_ids: ClientIds,
    /// Lifetime (`exp - iat`).
    pub ttl: Duration,
    /// `exp` already in the past: the broker must refuse the token.
    pub expired: bool,
    /// Signed with a wrong secret: the broker must refuse the token.
    pub bad_signature: bool,
    /// Header `kid` instead of the node's key id (an unknown kid must be refused).
    pub kid: Option<String>,
}

impl Default for TokenOptions {
    fn default() -> Self {
        TokenOptions { client_ids: ClientIds::Any, ttl: DEFAULT_TTL, expired: false, bad_signature: false, kid: None }
    }
}

/// Signs tokens with one node's HS256 key.
#[derive(Clone, Debug)]
pub struct Issuer {
    secret: String,
    kid: String,
}

impl Issuer {
    /// An issuer for the HS256 key `secret` known to the broker as `kid`.
    pub fn new(secret: impl Into<String>, kid: impl Into<String>) -> Issuer {
        Issuer { secret: secret.into(), kid: kid.into() }
    }

    /// A token for `user` of `app`.
    ///
    /// # Errors
    ///
    /// When `user` or `app` is empty or contains a character that is a separator or wildcard in
    /// MQTT, AMQP topics or scope patterns (`. / + * # %`, whitespace, control characters).
    pub fn mint(&self, user: &str, app: &str, options: &TokenOptions) -> Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).context("system clock before 1970")?.as_secs();
        let issued_at =
            if options.expired { now.saturating_sub(EXPIRED_BY.as_secs() + options.ttl.as_secs()) } else { now };
        let request = TokenRequest {
            user,
            app,
            resource_server_id: RESOURCE_SERVER_ID,
            client_ids: options.client_ids,
            issued_at,
            ttl: options.ttl,
        };
        let mut secret = self.secret.clone();
        if options.bad_signature {
            secret.push_str(BAD_SECRET_SUFFIX);
        }
        let kid = options.kid.as_deref().unwrap_or(&self.kid);
        token::mint(&secret, Some(kid), &request).with_context(|| format!("signing a JWT for user {user} of app {app}"))
    }

    /// The claims [`Issuer::mint`] signs for `user` of `app` (default options), to alter and
    /// [`Issuer::sign`] when a test needs a token a verifier must refuse.
    ///
    /// # Errors
    /// As [`Issuer::mint`].
    pub fn claims(&self, user: &str, app: &str) -> Result<Map<String, Value>> {
        let token = self.mint(user, app, &TokenOptions::default())?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[RESOURCE_SERVER_ID]);
        let key = DecodingKey::from_secret(self.secret.as_bytes());
        Ok(jsonwebtoken::decode::<Map<String, Value>>(&token, &key, &validation).context("reading back a JWT")?.claims)
    }

    /// Signs `claims` as they are (HS256 with this key and its kid).
    ///
    /// # Errors
    /// When signing fails.
    pub fn sign(&self, claims: &Map<String, Value>) -> Result<String> {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(self.secret.as_bytes()))
            .context("signing a JWT")
    }
}

/// The scopes of one chat21 user on the private node (see [`inboxd::token::scopes`]).
pub fn scopes(user: &str, app: &str, client_ids: ClientIds) -> Vec<String> {
    token::scopes(user, app, RESOURCE_SERVER_ID, client_ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, decode_header};

    /// As long as inboxd's `[auth] secret` must be (32 bytes or more).
    const SECRET: &str = "inboxd-test-secret-0123456789abcdef";

    fn verify(token: &str, secret: &str) -> jsonwebtoken::errors::Result<Value> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[RESOURCE_SERVER_ID]);
        decode::<Value>(token, &DecodingKey::from_secret(secret.as_bytes()), &validation).map(|data| data.claims)
    }

    #[test]
    fn queue_scopes_follow_the_client_id_mode() {
        let queue_scopes = |mode| scopes("bob", "app1", mode).split_off(6);
        assert_eq!(
            queue_scopes(ClientIds::Exact),
            [
                "rabbitmq.configure:*/mqtt-subscription-bobqos0",
                "rabbitmq.write:*/mqtt-subscription-bobqos0",
                "rabbitmq.read:*/mqtt-subscription-bobqos0",
                "rabbitmq.configure:*/mqtt-subscription-bobqos1",
                "rabbitmq.write:*/mqtt-subscription-bobqos1",
                "rabbitmq.read:*/mqtt-subscription-bobqos1",
            ]
        );
        assert_eq!(
            queue_scopes(ClientIds::Prefix),
            [
                "rabbitmq.configure:*/mqtt-subscription-bob.*",
                "rabbitmq.write:*/mqtt-subscription-bob.*",
                "rabbitmq.read:*/mqtt-subscription-bob.*",
            ]
        );
    }

    #[test]
    fn token_carries_the_claims_rabbitmq_needs() {
        let issuer = Issuer::new(SECRET, JWT_KID);
        let token = issuer.mint("alice", "tilechat", &TokenOptions::default()).unwrap();
        let header = decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(JWT_KID));
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        let claims = verify(&token, SECRET).unwrap();
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["user_id"], "alice");
        assert_eq!(claims["app_id"], "tilechat");
        assert_eq!(claims["aud"], serde_json::json!([RESOURCE_SERVER_ID]));
        assert_eq!(claims["scope"], serde_json::json!(scopes("alice", "tilechat", ClientIds::Any)));
        let (iat, exp) = (claims["iat"].as_u64().unwrap(), claims["exp"].as_u64().unwrap());
        assert_eq!(exp - iat, DEFAULT_TTL.as_secs());
    }

    #[test]
    fn broken_tokens_fail_verification() {
        let issuer = Issuer::new(SECRET, JWT_KID);
        let expired = TokenOptions { expired: true, ..TokenOptions::default() };
        let token = issuer.mint("alice", "tilechat", &expired).unwrap();
        assert_eq!(*verify(&token, SECRET).unwrap_err().kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature);

        let forged = TokenOptions { bad_signature: true, ..TokenOptions::default() };
        let token = issuer.mint("alice", "tilechat", &forged).unwrap();
        assert_eq!(*verify(&token, SECRET).unwrap_err().kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature);

        let other_kid = TokenOptions { kid: Some("other-key".into()), ..TokenOptions::default() };
        let token = issuer.mint("alice", "tilechat", &other_kid).unwrap();
        assert_eq!(decode_header(&token).unwrap().kid.as_deref(), Some("other-key"));
    }

    #[test]
    fn claims_can_be_altered_and_signed() {
        let issuer = Issuer::new(SECRET, JWT_KID);
        let mut claims = issuer.claims("alice", "tilechat").unwrap();
        assert_eq!(claims["sub"], "alice");
        claims.remove("aud");
        let token = issuer.sign(&claims).unwrap();
        assert_eq!(decode_header(&token).unwrap().kid.as_deref(), Some(JWT_KID));
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_aud = false;
        let back = decode::<Value>(&token, &DecodingKey::from_secret(SECRET.as_bytes()), &validation).unwrap();
        assert!(back.claims.get("aud").is_none() && back.claims["sub"] == "alice");
    }

    #[test]
    fn ids_that_widen_scopes_are_refused() {
        let issuer = Issuer::new(SECRET, JWT_KID);
        for user in ["", "bob.messages", "a/b", "a+", "a*", "a#", "a%2F", "a b"] {
            assert!(issuer.mint(user, "tilechat", &TokenOptions::default()).is_err(), "{user:?} accepted");
        }
        assert!(issuer.mint("alice", "tile.chat", &TokenOptions::default()).is_err());
    }
}
