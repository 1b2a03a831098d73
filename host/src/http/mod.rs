//! The operator's HTTP endpoints: Prometheus `/metrics`, liveness `/healthz` and readiness
//! `/readyz` (connected, consuming, plugin chain loaded), and the routes the daemon adds: the
//! history API's, with CORS for browsers (`cors.rs`), and the moderation console's. One small
//! axum router, served over HTTP/1 with bounded connections and timeouts (`[http]`), so slow
//! clients cannot hold it.

mod config;
mod cors;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::timeout::TimeoutLayer;
use tracing::{debug, info, warn};

use crate::health::Health;

pub use config::{
    DEFAULT_HTTP_HEADER_READ_TIMEOUT, DEFAULT_HTTP_MAX_CONNECTIONS, DEFAULT_HTTP_REQUEST_TIMEOUT, HttpConfig, RawHttp,
    validate,
};

/// How long a kept-alive connection serves requests before it is asked to close (after the
/// request in flight, within `http.request_timeout_ms`). Bounds how long a client that stops
/// reading its answers holds one of `http.max_connections`; clients just reconnect.
const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Pause after a failed `accept` (e.g. out of file descriptors), instead of spinning.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How often recorded histogram samples are folded into their buckets. The recorder holds every
/// sample until then (a few per message: ~4 MiB in 5 s at 6,000 messages a second), so a short
/// period keeps that memory small; folding costs the same per sample either way.
const METRICS_UPKEEP: Duration = Duration::from_secs(1);

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

/// Folds the histogram samples recorded since into their buckets every [`METRICS_UPKEEP`] until
/// `stop`. The recorder keeps each sample until a scrape or an upkeep does this, so without it a
/// daemon nobody scrapes would grow by a few samples per message, without bound.
pub async fn keep_up(metrics: PrometheusHandle, stop: CancellationToken) {
    let mut every = tokio::time::interval(METRICS_UPKEEP);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while stop.run_until_cancelled(every.tick()).await.is_some() {
        metrics.run_upkeep();
    }
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

/// Serves the endpoints (and the daemon's `routes`: history API, console) on `listener` until `shutdown`,
/// within the bounds of `limits`: at most `max_connections` at once (more wait in the backlog),
/// each request answered within `request_timeout` (else 503), each request head read within
/// `header_read_timeout` (else the connection is closed), each connection kept at most
/// [`MAX_CONNECTION_LIFETIME`]. On shutdown, requests in flight get `request_timeout` to finish.
///
/// # Errors
/// When the listener's address cannot be read.
pub async fn serve(
    listener: TcpListener,
    limits: HttpConfig,
    metrics: Option<PrometheusHandle>,
    health: Health,
    routes: Option<Router>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Endpoints { metrics, health });
    if let Some(routes) = routes {
        app = app.merge(routes);
    }
    // CORS outermost, so the timeout's 503 carries it too.
    let app = with_timeout(app, limits.request_timeout).layer(axum::middleware::from_fn(cors::api_cors));
    let service = TowerToHyperService::new(app);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    info!(address = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    warn!(error = %err, "accepting an HTTP connection failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
        };
        let connection = http1.serve_connection(TokioIo::new(stream), service.clone());
        tokio::spawn(close_in_time(Box::pin(connection), limits.request_timeout, shutdown.clone(), permit));
    }
    drop(listener);
    // Each connection returns its permit once closed: having them all back means all are closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _all_closed = connections.acquire_many(all).await;
    Ok(())
}

/// One accepted connection, served by the router.
type Connection = hyper::server::conn::http1::Connection<TokioIo<TcpStream>, TowerToHyperService<Router>>;

/// Serves one connection until it ends, or until shutdown or [`MAX_CONNECTION_LIFETIME`]; then
/// lets it finish the request in flight within `grace` and closes it. The permit goes back only
/// once the socket is closed.
async fn close_in_time(
    mut connection: Pin<Box<Connection>>,
    grace: Duration,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let close = tokio::select! {
        result = connection.as_mut() => {
            // Client errors (reset, a head not sent within the header timeout): nothing to do.
            if let Err(err) = result {
                debug!(error = %err, "HTTP connection ended with an error");
            }
            false
        }
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(MAX_CONNECTION_LIFETIME) => true,
    };
    if close {
        connection.as_mut().graceful_shutdown();
        if tokio::time::timeout(grace, connection.as_mut()).await.is_err() {
            debug!("HTTP connection closed without finishing its request");
        }
    }
    drop(connection);
    drop(permit);
}

/// `app` answering 503 to a request not answered within `timeout`.
fn with_timeout(app: Router, timeout: Duration) -> Router {
    app.layer(tower::ServiceBuilder::new().layer(HandleErrorLayer::new(timed_out)).layer(TimeoutLayer::new(timeout)))
}

/// The answer to a request that ran past `http.request_timeout_ms` (shaped like the history
/// API's refusals).
async fn timed_out(_elapsed: tower::BoxError) -> (StatusCode, Json<Value>) {
    let err = "the request took longer than http.request_timeout_ms";
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"success": false, "err": err})))
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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_request_past_its_timeout_is_answered_503() {
        let app = Router::new()
            .route("/slow", get(|| tokio::time::sleep(Duration::from_secs(3600))))
            .route("/fast", get(|| async { "ok" }));
        let app = with_timeout(app, Duration::from_secs(1));
        let call = |path: &str| app.clone().oneshot(Request::get(path).body(Body::empty()).unwrap());
        assert_eq!(call("/fast").await.unwrap().status(), StatusCode::OK);
        assert_eq!(call("/slow").await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
