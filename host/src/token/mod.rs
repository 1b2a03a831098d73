//! User JWTs for RabbitMQ's oauth2 backend: minted with the exact scope set of the inbox pattern
//! (a user writes only its own topics and reads only its own inbox), signed HS256 with the
//! broker's key; and verified, strictly, for the history API.

mod config;

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::chat21::check_id;

pub use config::{AuthConfig, MIN_AUTH_SECRET_BYTES, RawAuth, validate};

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
        let issued_at = crate::clock::now_secs();
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

/// Why [`Verifier::caller`] refuses a token. [`Refused::OtherApp`] is a valid token used for
/// the wrong app (HTTP 403); every other variant is not a valid token (401).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Refused {
    #[error("the token has no `{0}` claim")]
    MissingClaim(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (`nbf`)")]
    NotYetValid,
    #[error("the token is for another audience")]
    Audience,
    #[error("invalid token (signature, algorithm or format)")]
    Invalid,
    #[error("the token is not for this app")]
    OtherApp,
}

impl Refused {
    /// A short label for counting refusals (bounded, one per variant).
    pub fn code(&self) -> &'static str {
        match self {
            Refused::MissingClaim(_) => "missing_claim",
            Refused::Expired => "expired",
            Refused::NotYetValid => "not_yet_valid",
            Refused::Audience => "audience",
            Refused::Invalid => "invalid",
            Refused::OtherApp => "other_app",
        }
    }
}

/// Who a valid token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`.
    pub user: String,
    /// `tiledesk_api_roles` is `"admin"` (one value, as chat21-http-server compares it): a
    /// server account of the app (Tiledesk's `CHAT21_ADMIN_TOKEN`) that may act for any user.
    pub admin: bool,
}

/// The claims the history API reads; the standard ones are checked by [`Validation`].
#[derive(Deserialize)]
struct VerifiedClaims {
    /// Required by the validation; optional here so its absence is reported as such.
    sub: Option<String>,
    app_id: Option<String>,
    scope: Option<serde_json::Value>,
    /// Tiledesk's role claim: `"admin"` for its server account, `"user"` otherwise.
    tiledesk_api_roles: Option<serde_json::Value>,
}

/// Checks user tokens as strictly as the broker should: HS256 with the configured key, `aud`
/// (the resource server id, alone or in a list as Tiledesk's `["rabbitmq", <uid>]`), `exp` and
/// `sub` required, `exp` and `nbf` checked without leeway, and the token's app must be the
/// requested one.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    resource_server_id: String,
}

impl Verifier {
    /// A verifier for tokens signed with `secret` for the audience `resource_server_id`.
    pub fn new(secret: &str, resource_server_id: &str) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[resource_server_id]);
        validation.set_required_spec_claims(&["aud", "exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 0;
        Verifier {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            resource_server_id: resource_server_id.to_owned(),
        }
    }

    /// The user (`sub`) `token` was issued to, if it is valid now and for `app`: its `app_id`
    /// claim (chat21's tokens) is `app`, or, without one, a scope reads that user's inbox in
    /// `app` (`<resource server>.read:<vhost>/<exchange>/apps.<app>.users.<sub>.*`, literally).
    ///
    /// # Errors
    /// [`Refused`] saying what is wrong with the token.
    pub fn user(&self, token: &str, app: &str) -> Result<String, Refused> {
        self.caller(token, app).map(|caller| caller.user)
    }

    /// Like [`Verifier::user`], with whether the token is the app's admin
    /// (`tiledesk_api_roles: "admin"`).
    ///
    /// # Errors
    /// [`Refused`] saying what is wrong with the token.
    pub fn caller(&self, token: &str, app: &str) -> Result<Caller, Refused> {
        let claims =
            jsonwebtoken::decode::<VerifiedClaims>(token, &self.key, &self.validation).map_err(refused)?.claims;
        let Some(user) = claims.sub.filter(|sub| !sub.is_empty()) else {
            return Err(Refused::MissingClaim("sub".into()));
        };
        let for_app = match &claims.app_id {
            Some(app_id) => app_id == app,
            None => self.scopes_read_inbox(claims.scope.as_ref(), app, &user),
        };
        let admin = claims.tiledesk_api_roles.as_ref().and_then(serde_json::Value::as_str) == Some("admin");
        if for_app { Ok(Caller { user, admin }) } else { Err(Refused::OtherApp) }
    }

    /// All of `token`'s claims if it is valid now (signature, audience, `exp`, `nbf`, `sub`), for
    /// any app: what chat21-http-server's `/verify` answers.
    ///
    /// # Errors
    /// [`Refused`] saying what is wrong with the token.
    pub fn claims(&self, token: &str) -> Result<serde_json::Map<String, serde_json::Value>, Refused> {
        jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(refused)
    }

    /// Whether `scope` (a list, or one space-separated string) reads `user`'s inbox in `app`.
    fn scopes_read_inbox(&self, scope: Option<&serde_json::Value>, app: &str, user: &str) -> bool {
        let inbox = format!("apps.{app}.users.{user}.*");
        let reads_inbox = |scope: &str| {
            scope
                .strip_prefix(self.resource_server_id.as_str())
                .and_then(|s| s.strip_prefix(".read:"))
                .and_then(|s| s.splitn(3, '/').nth(2))
                .is_some_and(|pattern| pattern == inbox)
        };
        match scope {
            Some(serde_json::Value::Array(scopes)) => scopes.iter().filter_map(|s| s.as_str()).any(reads_inbox),
            Some(serde_json::Value::String(scopes)) => scopes.split_whitespace().any(reads_inbox),
            _ => false,
        }
    }
}

/// Why jsonwebtoken refused a token, as [`Refused`].
fn refused(err: jsonwebtoken::errors::Error) -> Refused {
    match err.into_kind() {
        ErrorKind::MissingRequiredClaim(claim) => Refused::MissingClaim(claim),
        ErrorKind::ExpiredSignature => Refused::Expired,
        ErrorKind::ImmatureSignature => Refused::NotYetValid,
        ErrorKind::InvalidAudience => Refused::Audience,
        _ => Refused::Invalid,
    }
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
    use serde_json::{Value, json};

    use super::*;

    /// A test key as long as [`MIN_AUTH_SECRET_BYTES`] asks.
    const SECRET: &str = "inboxd-unit-test-secret-of-32-bytes+";

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
        let token = mint(SECRET, Some("k1"), &request).unwrap();
        assert_eq!(jsonwebtoken::decode_header(&token).unwrap().kid.as_deref(), Some("k1"));
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&["rabbitmq"]);
        let claims = decode::<Value>(&token, &DecodingKey::from_secret(SECRET.as_bytes()), &validation).unwrap().claims;
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 60);
    }

    #[test]
    fn refuses_no_secret_and_pattern_characters() {
        let request = TokenRequest::now("alice", "tilechat", "rabbitmq", ClientIds::Any, Duration::from_secs(60));
        assert!(matches!(mint("", None, &request), Err(TokenError::NoSecret)));
        let bad = TokenRequest { user: "bob.messages", ..request };
        assert!(matches!(mint(SECRET, None, &bad), Err(TokenError::BadId(_))));
        let escape = TokenRequest { user: "a%2F", ..bad };
        assert!(matches!(mint(SECRET, None, &escape), Err(TokenError::Escape { .. })));
    }

    fn now() -> i64 {
        crate::clock::now_secs() as i64
    }

    /// The claims `mint` writes for alice of app `a`, to take apart.
    fn claims() -> serde_json::Map<String, Value> {
        let value = serde_json::json!({
            "sub": "alice", "user_id": "alice", "app_id": "a", "aud": ["rabbitmq"],
            "scope": scopes("alice", "a", "rabbitmq", ClientIds::Any), "iat": now(), "exp": now() + 60,
        });
        let Value::Object(map) = value else { unreachable!("an object literal") };
        map
    }

    fn sign(claims: &serde_json::Map<String, Value>) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes()))
            .unwrap()
    }

    #[test]
    fn verifier_takes_minted_tokens_of_its_app() {
        let verifier = Verifier::new(SECRET, "rabbitmq");
        let request = TokenRequest::now("alice", "a", "rabbitmq", ClientIds::Any, Duration::from_secs(60));
        let token = mint(SECRET, Some("k1"), &request).unwrap();
        assert_eq!(verifier.user(&token, "a"), Ok("alice".to_owned()));
        assert_eq!(verifier.user(&token, "b"), Err(Refused::OtherApp));
        assert_eq!(verifier.user(&sign(&claims()), "a"), Ok("alice".to_owned()));
    }

    #[test]
    fn verifier_requires_aud_exp_and_sub_and_checks_nbf() {
        let verifier = Verifier::new(SECRET, "rabbitmq");
        for claim in ["aud", "exp", "sub"] {
            let mut c = claims();
            c.remove(claim);
            assert_eq!(verifier.user(&sign(&c), "a"), Err(Refused::MissingClaim(claim.into())), "{claim}");
        }
        let mut c = claims();
        c.insert("sub".into(), "".into());
        assert_eq!(verifier.user(&sign(&c), "a"), Err(Refused::MissingClaim("sub".into())));
        let mut c = claims();
        c.insert("nbf".into(), (now() + 600).into());
        assert_eq!(verifier.user(&sign(&c), "a"), Err(Refused::NotYetValid));
        c.insert("nbf".into(), (now() - 1).into());
        assert_eq!(verifier.user(&sign(&c), "a"), Ok("alice".to_owned()));
        let mut c = claims();
        c.insert("exp".into(), (now() - 1).into());
        assert_eq!(verifier.user(&sign(&c), "a"), Err(Refused::Expired));
        let mut c = claims();
        c.insert("aud".into(), "another-server".into());
        assert_eq!(verifier.user(&sign(&c), "a"), Err(Refused::Audience));
    }

    #[test]
    fn verifier_takes_tiledesk_tokens_audience_lists_and_the_admin_role() {
        let verifier = Verifier::new(SECRET, "rabbitmq");
        let mut c = claims();
        c.insert("aud".into(), json!(["rabbitmq", "alice"]));
        c.insert("tiledesk_api_roles".into(), "user".into());
        assert_eq!(verifier.caller(&sign(&c), "a"), Ok(Caller { user: "alice".into(), admin: false }));
        c.insert("tiledesk_api_roles".into(), "admin".into());
        assert_eq!(verifier.caller(&sign(&c), "a"), Ok(Caller { user: "alice".into(), admin: true }));
        assert_eq!(verifier.caller(&sign(&c), "b"), Err(Refused::OtherApp), "admin of its own app only");
        for roles in [json!("admin,user"), json!(["admin"]), json!("Admin")] {
            c.insert("tiledesk_api_roles".into(), roles.clone());
            assert_eq!(verifier.caller(&sign(&c), "a"), Ok(Caller { user: "alice".into(), admin: false }), "{roles}");
        }
        c.insert("aud".into(), json!(["other", "alice"]));
        assert_eq!(verifier.caller(&sign(&c), "a"), Err(Refused::Audience));
    }

    #[test]
    fn verifier_refuses_other_keys_and_algorithms() {
        let verifier = Verifier::new(SECRET, "rabbitmq");
        let other_key = EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes");
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims(), &other_key).unwrap();
        assert_eq!(verifier.user(&token, "a"), Err(Refused::Invalid));
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims(), &key).unwrap();
        assert_eq!(verifier.user(&token, "a"), Err(Refused::Invalid));
        assert_eq!(verifier.user("e30.e30.e30", "a"), Err(Refused::Invalid));
    }

    #[test]
    fn without_app_id_the_inbox_scope_names_the_app() {
        let verifier = Verifier::new(SECRET, "rabbitmq");
        let mut c = claims();
        c.remove("app_id");
        assert_eq!(verifier.user(&sign(&c), "a"), Ok("alice".to_owned()));
        assert_eq!(verifier.user(&sign(&c), "b"), Err(Refused::OtherApp));
        c.insert("scope".into(), "rabbitmq.write:*/*/x rabbitmq.read:*/*/apps.a.users.alice.*".into());
        assert_eq!(verifier.user(&sign(&c), "a"), Ok("alice".to_owned()), "a space-separated scope string");
        for scope in [
            "rabbitmq.read:*/*/apps.a.users.bob.*",
            "rabbitmq.read:*/*/apps.*.users.alice.*",
            "other.read:*/*/apps.a.users.alice.*",
            "rabbitmq.write:*/*/apps.a.users.alice.*",
        ] {
            c.insert("scope".into(), scope.into());
            assert_eq!(verifier.user(&sign(&c), "a"), Err(Refused::OtherApp), "{scope}");
        }
        c.remove("scope");
        assert_eq!(verifier.user(&sign(&c), "a"), Err(Refused::OtherApp), "no app at all");
    }
}
