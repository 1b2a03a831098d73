//! The webhook delivery task: reads due events from the outbox, POSTs each to its endpoint
//! (leased, bounded per endpoint, with a timeout), and records the outcome: delivered, rejected
//! (a final 4xx: the endpoint does not want the event), retry with exponential backoff, or dead
//! letter after `max_attempts`. Routing never waits for it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, StatusCode};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::WebhookConfig;
use super::endpoint;
use super::sign::{SIGNATURE_HEADER, signature};
use crate::clock::{Backoff, now_ms};
use crate::store::Store;
use crate::store::outbox::OutboxEntry;
use crate::telemetry;

/// How often the outbox is read when nothing wakes the task (retries come due by time).
const POLL: Duration = Duration::from_millis(250);
/// Due events read per round, beyond those already in flight.
const BATCH: usize = 256;
/// How long past its timeout an attempt keeps its event leased.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The client for `http://` and `https://` endpoints: rustls (on ring) trusting Mozilla's roots
/// and `config.extra_roots`.
fn client(config: &WebhookConfig) -> Result<HttpClient, rustls::Error> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for cert in &config.extra_roots {
        roots.add(cert.clone())?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// The outcome of one attempt, waiting to be recorded in the outbox.
struct Attempt {
    entry: OutboxEntry,
    result: Outcome,
}

/// What one POST came to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// A 2xx answer.
    Delivered,
    /// A 4xx that is the endpoint's final word (it does not want this event): never retried.
    Rejected(StatusCode),
    /// Anything else (5xx, 408, 429, no answer): retried, then dead-lettered.
    Failed(String),
}

/// What `status` means for the event: 4xx other than 408 (timeout) and 429 (slow down) are final
/// unless `retry_client_errors`.
fn outcome(status: StatusCode, retry_client_errors: bool) -> Outcome {
    let transient = matches!(status, StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS);
    if status.is_success() {
        Outcome::Delivered
    } else if status.is_client_error() && !transient && !retry_client_errors {
        Outcome::Rejected(status)
    } else {
        Outcome::Failed(format!("answered {status}"))
    }
}

/// Starts delivering the outbox events of `app`; `wake` is notified when new events commit.
pub fn spawn(
    store: Store,
    app: String,
    config: WebhookConfig,
    wake: Arc<Notify>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(run(store, app, config, wake, stop))
}

async fn run(store: Store, app: String, config: WebhookConfig, wake: Arc<Notify>, stop: CancellationToken) {
    let client = match client(&config) {
        Ok(client) => client,
        Err(err) => {
            telemetry::webhook_outbox_failed(&format!("no TLS client: {err}"));
            return;
        }
    };
    let config = Arc::new(config);
    let mut limits: HashMap<String, Arc<Semaphore>> = HashMap::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut unrecorded: Vec<Attempt> = Vec::new();
    let (done, mut outcomes) = mpsc::unbounded_channel::<Attempt>();
    // An attempt's lease: if its outcome is never recorded (crash), the event is due again after it.
    let lease = i64::try_from((config.timeout + LEASE_MARGIN).as_millis()).unwrap_or(i64::MAX);
    loop {
        while let Ok(attempt) = outcomes.try_recv() {
            unrecorded.push(attempt);
        }
        // An outcome that cannot be recorded now (database down) is kept and its event stays
        // in flight, so it is neither lost nor sent twice.
        let mut kept = Vec::new();
        for attempt in unrecorded.drain(..) {
            match record(&store, &config, &attempt).await {
                Ok(()) => {
                    in_flight.remove(&attempt.entry.id);
                }
                Err(err) => {
                    telemetry::webhook_outbox_failed(&err);
                    kept.push(attempt);
                }
            }
        }
        unrecorded = kept;
        let limit = i64::try_from(BATCH + in_flight.len()).unwrap_or(i64::MAX);
        match store.due_webhooks(&app, now_ms(), limit).await {
            Ok(due) => {
                for entry in due {
                    if in_flight.contains(&entry.id) {
                        continue;
                    }
                    let limit = limits
                        .entry(entry.endpoint.clone())
                        .or_insert_with(|| Arc::new(Semaphore::new(config.concurrency)));
                    let Ok(permit) = Arc::clone(limit).try_acquire_owned() else { continue };
                    match store.claim_webhook(&entry, now_ms() + lease).await {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(err) => {
                            telemetry::webhook_outbox_failed(&err);
                            break;
                        }
                    }
                    in_flight.insert(entry.id.clone());
                    let (client, config, done) = (client.clone(), Arc::clone(&config), done.clone());
                    tokio::spawn(async move {
                        let result = post(&client, &config, &entry).await;
                        drop(permit);
                        let _ = done.send(Attempt { entry, result });
                    });
                }
            }
            Err(err) => telemetry::webhook_outbox_failed(&err),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            Some(attempt) = outcomes.recv() => unrecorded.push(attempt),
            () = wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Writes an attempt's outcome to the outbox.
async fn record(store: &Store, config: &WebhookConfig, attempt: &Attempt) -> Result<(), sqlx::Error> {
    let entry = &attempt.entry;
    match &attempt.result {
        Outcome::Delivered => {
            telemetry::webhook_sent(&entry.event_type, entry.attempts + 1);
            store.webhook_delivered(&entry.id).await
        }
        Outcome::Rejected(status) => {
            endpoint::rejected(&entry.event_type, &entry.endpoint, status.as_u16());
            store.webhook_delivered(&entry.id).await
        }
        Outcome::Failed(error) => {
            let attempts = u32::try_from(entry.attempts + 1).unwrap_or(u32::MAX);
            let retry_at = (attempts < config.max_attempts).then(|| {
                let backoff = Backoff::step(config.retry_initial, config.retry_max, attempts);
                now_ms() + i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX)
            });
            endpoint::failed(&entry.event_type, &entry.endpoint, error, retry_at.is_none());
            store.webhook_failed(&entry.id, error, retry_at).await
        }
    }
}

/// One POST of the event's body; any 2xx answer within the timeout counts as delivered.
async fn post(client: &HttpClient, config: &WebhookConfig, entry: &OutboxEntry) -> Outcome {
    match send(client, config, entry).await {
        Ok(status) => outcome(status, config.retry_client_errors),
        Err(error) => Outcome::Failed(error),
    }
}

/// The status the endpoint answered within the timeout.
async fn send(client: &HttpClient, config: &WebhookConfig, entry: &OutboxEntry) -> Result<StatusCode, String> {
    let mut request = Request::post(entry.endpoint.as_str())
        .header("content-type", "application/json")
        .header("x-inboxd-event", entry.event_type.as_str())
        .header("x-inboxd-delivery", entry.id.as_str());
    if !config.secret.is_empty() {
        request = request.header(SIGNATURE_HEADER, signature(&config.secret, entry.body.as_bytes()));
    }
    let request = request.body(Full::new(Bytes::from(entry.body.clone()))).map_err(|e| format!("bad request: {e}"))?;
    match tokio::time::timeout(config.timeout, client.request(request)).await {
        Err(_) => Err(format!("no answer within {} ms", config.timeout.as_millis())),
        Ok(Err(err)) => Err(format!("request failed: {}", with_causes(&err))),
        Ok(Ok(response)) => Ok(response.status()),
    }
}

/// `err` and its causes, `: `-separated (hyper's own message alone says only "client error (Connect)").
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut shown = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        shown = format!("{shown}: {err}");
        cause = err.source();
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_4xx_is_final_but_408_429_and_5xx_are_retried() {
        let of = |code: u16, retry: bool| outcome(StatusCode::from_u16(code).unwrap(), retry);
        assert_eq!(of(200, false), Outcome::Delivered);
        assert_eq!(of(204, false), Outcome::Delivered);
        for code in [400, 401, 403, 404, 410, 422] {
            assert_eq!(of(code, false), Outcome::Rejected(StatusCode::from_u16(code).unwrap()), "{code}");
            assert!(matches!(of(code, true), Outcome::Failed(_)), "{code} with retry_client_errors");
        }
        for code in [408, 429, 500, 502, 503, 301] {
            assert!(matches!(of(code, false), Outcome::Failed(_)), "{code}");
        }
    }
}
