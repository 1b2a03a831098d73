//! The moderation console, served under `/console` on the HTTP listener when `[console]` is
//! enabled: a login against configured accounts, then pages for the overview, the held queue,
//! recent refusals, dead letters, the plugin chain and the audit log, each backed by a JSON
//! endpoint under `/console/api/`. The pages are plain HTML, CSS and JS built into the binary
//! (`assets/`), refreshed by short polling.
//!
//! Every request but the login page needs a live session cookie ([`session`]); every request
//! that changes something also needs the session's CSRF token ([`csrf`]) and, for moderation,
//! the moderator role; every action goes to the audit log ([`audit`]). Held messages are
//! released and discarded by [`crate::held`] itself, so its once-only guarantee holds here.

mod assets;
mod audit;
mod auth;
mod chain;
mod config;
mod csrf;
mod dead;
mod exposition;
mod held;
mod overview;
pub mod password;
mod refusals;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Json};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;

pub use config::{Account, ConsoleConfig, RawConsole, Role, validate};

use crate::broker::{BrokerConfig, HeldKey};
use crate::plugin::{PluginsConfig, Reloads};
use crate::refusals::Refusals;
use crate::routing::RoutingConfig;
use crate::store::StoreConfig;
use crate::webhook::WebhookConfig;
use audit::Audit;
use session::{Session, Sessions};

/// Logins checked at once: Argon2 is slow on purpose, so a flood of guesses waits here
/// instead of taking every CPU.
const CONCURRENT_LOGINS: usize = 2;
/// Ids one action may name.
const MAX_IDS_PER_ACTION: usize = 500;

/// What the console needs of the daemon's configuration (the root config lends it).
#[derive(Debug, Clone)]
pub struct Setup {
    pub console: ConsoleConfig,
    pub app_id: String,
    pub broker: BrokerConfig,
    pub held_key: Option<HeldKey>,
    pub routing: RoutingConfig,
    pub store: StoreConfig,
    pub webhook: WebhookConfig,
}

impl Setup {
    /// What `crate::held` needs, with the chain configuration now in force.
    fn held<'a>(&'a self, plugins: &'a PluginsConfig) -> crate::held::Setup<'a> {
        crate::held::Setup {
            app_id: &self.app_id,
            broker: &self.broker,
            key: self.held_key.clone(),
            plugins,
            routing: &self.routing,
            store: &self.store,
            webhook: &self.webhook,
        }
    }
}

/// The console's shared state.
struct Console {
    setup: Setup,
    sessions: Sessions,
    audit: Audit,
    logins: Semaphore,
    /// Renders the same numbers `/metrics` exports; `None` when another recorder is installed.
    metrics: Option<PrometheusHandle>,
    refusals: Refusals,
    reloads: Reloads,
}

type Shared = Arc<Console>;

/// The console's routes, or `None` when `[console]` is not enabled.
pub fn routes(setup: Setup, metrics: Option<PrometheusHandle>, refusals: Refusals, reloads: Reloads) -> Option<Router> {
    if !setup.console.enabled {
        return None;
    }
    let sessions = Sessions::new(setup.console.session_ttl);
    let console = Arc::new(Console {
        setup,
        sessions,
        audit: Audit::default(),
        logins: Semaphore::new(CONCURRENT_LOGINS),
        metrics,
        refusals,
        reloads,
    });
    let guarded = Router::new()
        .route("/console", get(assets::index))
        .route("/console/", get(assets::index))
        .route("/console/console.js", get(assets::script))
        .route("/console/console.css", get(assets::style))
        .route("/console/logout", post(auth::logout))
        .route("/console/api/session", get(auth::whoami))
        .route("/console/api/overview", get(overview::show))
        .route("/console/api/held", get(held::list))
        .route("/console/api/held/release", post(held::release))
        .route("/console/api/held/discard", post(held::discard))
        .route("/console/api/refusals", get(refusals::list))
        .route("/console/api/dead", get(dead::list))
        .route("/console/api/dead/replay", post(dead::replay))
        .route("/console/api/dead/discard", post(dead::discard))
        .route("/console/api/chain", get(chain::show))
        .route("/console/api/chain/reload", post(chain::reload))
        .route("/console/api/audit", get(audit_log))
        .route("/console/{*rest}", any(not_found))
        .layer(middleware::from_fn_with_state(Arc::clone(&console), auth::guard));
    let open = Router::new()
        .route("/console/login", get(auth::login_page).post(auth::login))
        .route("/console/login/style.css", get(assets::style));
    Some(guarded.merge(open).with_state(console).layer(middleware::from_fn(security_headers)))
}

/// Ids named by an action (`{"ids": [...]}`).
#[derive(Debug, Deserialize)]
struct Ids {
    ids: Vec<String>,
}

impl Ids {
    /// The ids, refused when there are none or too many.
    fn checked(self) -> Result<Vec<String>, Denied> {
        if self.ids.is_empty() || self.ids.len() > MAX_IDS_PER_ACTION {
            return Err(Denied(StatusCode::BAD_REQUEST, format!("name 1 to {MAX_IDS_PER_ACTION} ids")));
        }
        Ok(self.ids)
    }
}

/// A request refused before anything was done.
struct Denied(StatusCode, String);

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        refuse(self.0, &self.1)
    }
}

/// A JSON refusal: `{"error": "..."}` with `status`.
fn refuse(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

/// The ids of a moderator's action; refused for a viewer, or for none or too many ids.
fn moderator_ids(session: &Session, ids: Ids) -> Result<Vec<String>, Denied> {
    moderator(session)?;
    ids.checked()
}

/// Refuses anyone but a moderator.
fn moderator(session: &Session) -> Result<(), Denied> {
    match session.role {
        Role::Moderator => Ok(()),
        Role::Viewer => Err(Denied(StatusCode::FORBIDDEN, "viewers cannot change anything; a moderator can".into())),
    }
}

async fn audit_log(State(console): State<Shared>, Extension(_): Extension<Session>) -> Response {
    Json(json!({ "actions": console.audit.newest_first() })).into_response()
}

async fn not_found() -> Response {
    refuse(StatusCode::NOT_FOUND, "no such console page")
}

/// Headers on every console answer: nothing cached, no framing, no inline or foreign script.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; form-action 'self'",
        ),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
