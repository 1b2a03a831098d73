//! The operator's HTTP endpoints: Prometheus `/metrics`, liveness `/healthz` and readiness
//! `/readyz` (connected, consuming, plugin chain loaded). One small axum router.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::health::Health;

/// Installs the Prometheus recorder for the `metrics` facade; call once, before counting.
///
/// # Errors
/// When another recorder is installed already.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets(&[0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")
}

#[derive(Clone)]
struct Endpoints {
    metrics: Option<PrometheusHandle>,
    health: Health,
}

/// Binds the HTTP address, so a taken port stops the daemon at start with a clear error.
///
/// # Errors
/// When the address cannot be bound.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| format!("binding the HTTP listener {address} (http.address)"))
}

/// Serves the endpoints (and the history API's `history` routes) on `listener` until `shutdown`.
///
/// # Errors
/// When the server fails.
pub async fn serve(
    listener: TcpListener,
    metrics: Option<PrometheusHandle>,
    health: Health,
    history: Option<Router>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Endpoints { metrics, health });
    if let Some(history) = history {
        app = app.merge(history);
    }
    info!(address = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await.context("HTTP server")
}

async fn render(State(endpoints): State<Endpoints>) -> (StatusCode, String) {
    match endpoints.metrics {
        Some(handle) => (StatusCode::OK, handle.render()),
        None => (StatusCode::NOT_FOUND, "metrics are recorded by another recorder in this process\n".into()),
    }
}

async fn ready(State(endpoints): State<Endpoints>) -> (StatusCode, &'static str) {
    if endpoints.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: not connected to the broker or not consuming\n")
    }
}
