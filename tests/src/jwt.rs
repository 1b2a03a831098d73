//! HS256 JWTs for chat21 users as RabbitMQ 3.10's oauth2 backend expects them (the claims and
//! scopes of `shared/tools/mint-jwt`): a user may write only its own topics and read only its inbox.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

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

/// The exchange MQTT publishes to and subscribes from (`mqtt.exchange`).
const EXCHANGE: &str = "amq.topic";

/// Which MQTT client ids a token allows. Scopes cannot name the client id (3.10 expands no
/// variables), so the mode decides which `mqtt-subscription-<client id>qos0|qos1` queues are granted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientIds {
    /// Any client id (`mqtt-subscription-*`), chat21's default. Whoever knows another client's
    /// id can take its session over.
    #[default]
    Any,
    /// Only the user id itself: one live connection per user.
    Exact,
    /// Only `<user>.<anything>`: several connections per user, no access to other users' queues.
    Prefix,
}

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

#[derive(Serialize)]
struct Claims<'a> {
    jti: String,
    /// RabbitMQ's user name (there is no client id claim).
    sub: &'a str,
    /// chat21 convention.
    user_id: &'a str,
    /// chat21 convention.
    app_id: &'a str,
    aud: [&'a str; 1],
    /// A JSON list: no space-splitting pitfalls.
    scope: Vec<String>,
    iat: u64,
    exp: u64,
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
        check_id("user", user)?;
        check_id("app", app)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).context("system clock before 1970")?.as_secs();
        let ttl = options.ttl.as_secs();
        let (iat, exp) = if options.expired {
            let exp = now.saturating_sub(EXPIRED_BY.as_secs());
            (exp.saturating_sub(ttl), exp)
        } else {
            (now, now + ttl)
        };
        let claims = Claims {
            jti: uuid::Uuid::new_v4().to_string(),
            sub: user,
            user_id: user,
            app_id: app,
            aud: [RESOURCE_SERVER_ID],
            scope: scopes(user, app, options.client_ids),
            iat,
            exp,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(options.kid.clone().unwrap_or_else(|| self.kid.clone()));
        let mut secret = self.secret.clone();
        if options.bad_signature {
            secret.push_str(BAD_SECRET_SUFFIX);
        }
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret.as_bytes()))
            .with_context(|| format!("signing a JWT for user {user} of app {app}"))
    }
}

/// The scopes of one chat21 user (any vhost): read its inbox, write its outgoing messages, read
/// receipts, conversation updates/archives and presence, plus its MQTT subscription queues.
pub fn scopes(user: &str, app: &str, client_ids: ClientIds) -> Vec<String> {
    let own_inbox = format!("apps.{app}.users.{user}");
    let mut scopes = vec![
        // subscribe apps/<app>/users/<user>/#; as a topic scope also `read` on the exchange
        format!("read:*/{EXCHANGE}/{own_inbox}.*"),
        format!("write:*/{EXCHANGE}/apps.{app}.outgoing.users.{user}.messages.*.outgoing"),
        format!("write:*/{EXCHANGE}/{own_inbox}.messages.*.update"),
        format!("write:*/{EXCHANGE}/{own_inbox}.conversations.*.update"),
        format!("write:*/{EXCHANGE}/{own_inbox}.conversations.*.archive"),
        // presence, also the retained last will
        format!("write:*/{EXCHANGE}/{own_inbox}.presence.*"),
    ];
    let queues = match client_ids {
        ClientIds::Any => vec!["mqtt-subscription-*".to_owned()],
        ClientIds::Exact => vec![format!("mqtt-subscription-{user}qos0"), format!("mqtt-subscription-{user}qos1")],
        ClientIds::Prefix => vec![format!("mqtt-subscription-{user}.*")],
    };
    for queue in &queues {
        for perm in ["configure", "write", "read"] {
            scopes.push(format!("{perm}:*/{queue}"));
        }
    }
    scopes.into_iter().map(|scope| format!("{RESOURCE_SERVER_ID}.{scope}")).collect()
}

/// Refuses ids that would widen a scope pattern: `bob.messages` would match inside bob's inbox,
/// `* + # %` are wildcards or escapes, `/` is the MQTT level separator.
fn check_id(kind: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        bail!("empty {kind} id");
    }
    if let Some(bad) = id.chars().find(|c| "./+*#%".contains(*c) || c.is_whitespace() || c.is_control()) {
        bail!("{kind} id {id:?} contains the forbidden character {bad:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
    use serde_json::Value;

    const SECRET: &str = "inboxd-test-secret";

    fn verify(token: &str, secret: &str) -> jsonwebtoken::errors::Result<Value> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[RESOURCE_SERVER_ID]);
        decode::<Value>(token, &DecodingKey::from_secret(secret.as_bytes()), &validation).map(|data| data.claims)
    }

    #[test]
    fn scopes_match_mint_jwt() {
        // `mint-jwt --user alice --scopes`, as recorded in shared/notes/rabbitmq.md
        let expected = [
            "rabbitmq.read:*/amq.topic/apps.tilechat.users.alice.*",
            "rabbitmq.write:*/amq.topic/apps.tilechat.outgoing.users.alice.messages.*.outgoing",
            "rabbitmq.write:*/amq.topic/apps.tilechat.users.alice.messages.*.update",
            "rabbitmq.write:*/amq.topic/apps.tilechat.users.alice.conversations.*.update",
            "rabbitmq.write:*/amq.topic/apps.tilechat.users.alice.conversations.*.archive",
            "rabbitmq.write:*/amq.topic/apps.tilechat.users.alice.presence.*",
            "rabbitmq.configure:*/mqtt-subscription-*",
            "rabbitmq.write:*/mqtt-subscription-*",
            "rabbitmq.read:*/mqtt-subscription-*",
        ];
        assert_eq!(scopes("alice", "tilechat", ClientIds::Any), expected);
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
    fn ids_that_widen_scopes_are_refused() {
        let issuer = Issuer::new(SECRET, JWT_KID);
        for user in ["", "bob.messages", "a/b", "a+", "a*", "a#", "a%2F", "a b"] {
            assert!(issuer.mint(user, "tilechat", &TokenOptions::default()).is_err(), "{user:?} accepted");
        }
        assert!(issuer.mint("alice", "tile.chat", &TokenOptions::default()).is_err());
    }
}
