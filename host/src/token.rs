//! User JWTs for RabbitMQ's oauth2 backend: the exact scope set of the inbox pattern (a user
//! writes only its own topics and reads only its own inbox), signed HS256 with the broker's key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use thiserror::Error;

use crate::chat21::check_id;

/// The exchange MQTT publishes to and subscribes from (`mqtt.exchange`).
const EXCHANGE: &str = "amq.topic";

/// Which MQTT client ids a token allows. RabbitMQ names a session's queues
/// `mqtt-subscription-<client id>qos0|qos1` and 3.10 expands no variables in scopes, so the
/// mode decides which of those queues the token may use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientIds {
    /// Any client id (chat21's random uuids). Whoever learns another user's client id can
    /// take that session over, queue and all.
    #[default]
    Any,
    /// Only `<user>.<anything>`: several connections per user, no cross-user takeover.
    Prefix,
    /// Only the user id itself: one live connection per user.
    Exact,
}

/// Why a token cannot be minted.
#[derive(Debug, Error)]
pub enum TokenError {
    #[error("no signing secret configured (auth.secret / INBOXD_AUTH_SECRET)")]
    NoSecret,
    #[error(transparent)]
    BadId(#[from] crate::chat21::InputError),
    #[error("{what} id {id:?} contains `%`, an escape character in scope patterns")]
    Escape { what: &'static str, id: String },
    #[error("signing failed: {0}")]
    Signing(#[from] jsonwebtoken::errors::Error),
}

/// What to put in a token.
#[derive(Debug, Clone)]
pub struct TokenRequest<'a> {
    pub user: &'a str,
    pub app: &'a str,
    /// RabbitMQ's `resource_server_id`: the audience and the prefix of every scope.
    pub resource_server_id: &'a str,
    pub client_ids: ClientIds,
    /// Seconds since the epoch.
    pub issued_at: u64,
    pub ttl: Duration,
}

impl<'a> TokenRequest<'a> {
    /// A request issued now.
    pub fn now(user: &'a str, app: &'a str, resource_server_id: &'a str, client_ids: ClientIds, ttl: Duration) -> Self {
        let issued_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        TokenRequest { user, app, resource_server_id, client_ids, issued_at, ttl }
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    jti: String,
    sub: &'a str,
    user_id: &'a str,
    app_id: &'a str,
    aud: [&'a str; 1],
    scope: Vec<String>,
    iat: u64,
    exp: u64,
}

/// Signs a token for `request` with the HS256 `secret`, naming key `kid` if given. The token
/// always expires (`exp`): RabbitMQ accepts a token without one forever.
///
/// # Errors
/// [`TokenError`] for an empty secret, an id that would widen a scope pattern, or signing.
pub fn mint(secret: &str, kid: Option<&str>, request: &TokenRequest) -> Result<String, TokenError> {
    if secret.is_empty() {
        return Err(TokenError::NoSecret);
    }
    for (what, id) in [("user", request.user), ("app", request.app)] {
        check_id(what, id)?;
        if id.contains('%') {
            return Err(TokenError::Escape { what, id: id.to_owned() });
        }
    }
    let claims = Claims {
        jti: uuid::Uuid::new_v4().to_string(),
        sub: request.user,
        user_id: request.user,
        app_id: request.app,
        aud: [request.resource_server_id],
        scope: scopes(request.user, request.app, request.resource_server_id, request.client_ids),
        iat: request.issued_at,
        exp: request.issued_at + request.ttl.as_secs(),
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.filter(|k| !k.is_empty()).map(str::to_owned);
    Ok(jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret.as_bytes()))?)
}

/// The scopes of one chat21 user: read its inbox; write its outgoing messages, read receipts,
/// conversation updates and archives, and presence (also its last will); its MQTT session queues.
pub fn scopes(user: &str, app: &str, resource_server_id: &str, client_ids: ClientIds) -> Vec<String> {
    let own_inbox = format!("apps.{app}.users.{user}");
    let mut scopes = vec![
        format!("read:*/{EXCHANGE}/{own_inbox}.*"),
        format!("write:*/{EXCHANGE}/apps.{app}.outgoing.users.{user}.messages.*.outgoing"),
        format!("write:*/{EXCHANGE}/{own_inbox}.messages.*.update"),
        format!("write:*/{EXCHANGE}/{own_inbox}.conversations.*.update"),
        format!("write:*/{EXCHANGE}/{own_inbox}.conversations.*.archive"),
        format!("write:*/{EXCHANGE}/{own_inbox}.presence.*"),
    ];
    let queues = match client_ids {
        ClientIds::Any => vec!["mqtt-subscription-*".to_owned()],
        ClientIds::Prefix => vec![format!("mqtt-subscription-{user}.*")],
        ClientIds::Exact => vec![format!("mqtt-subscription-{user}qos0"), format!("mqtt-subscription-{user}qos1")],
    };
    for queue in &queues {
        for perm in ["configure", "write", "read"] {
            scopes.push(format!("{perm}:*/{queue}"));
        }
    }
    scopes.into_iter().map(|scope| format!("{resource_server_id}.{scope}")).collect()
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation, decode};
    use serde_json::Value;

    use super::*;

    #[test]
    fn scopes_are_the_inbox_pattern() {
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
        assert_eq!(scopes("alice", "tilechat", "rabbitmq", ClientIds::Any), expected);
        assert!(
            scopes("bob", "a", "rabbitmq", ClientIds::Prefix)
                .contains(&"rabbitmq.read:*/mqtt-subscription-bob.*".into())
        );
    }

    #[test]
    fn minted_token_verifies_and_expires() {
        let request = TokenRequest::now("alice", "tilechat", "rabbitmq", ClientIds::Any, Duration::from_secs(60));
        let token = mint("s3cret", Some("k1"), &request).unwrap();
        assert_eq!(jsonwebtoken::decode_header(&token).unwrap().kid.as_deref(), Some("k1"));
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&["rabbitmq"]);
        let claims = decode::<Value>(&token, &DecodingKey::from_secret(b"s3cret"), &validation).unwrap().claims;
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 60);
    }

    #[test]
    fn refuses_no_secret_and_pattern_characters() {
        let request = TokenRequest::now("alice", "tilechat", "rabbitmq", ClientIds::Any, Duration::from_secs(60));
        assert!(matches!(mint("", None, &request), Err(TokenError::NoSecret)));
        let bad = TokenRequest { user: "bob.messages", ..request };
        assert!(matches!(mint("s", None, &bad), Err(TokenError::BadId(_))));
        let escape = TokenRequest { user: "a%2F", ..bad };
        assert!(matches!(mint("s", None, &escape), Err(TokenError::Escape { .. })));
    }
}
