//! The daemon's lifecycle: one broker session at a time (connect, declare, consume, work),
//! reconnecting with backoff when it fails, draining in-flight deliveries on shutdown.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow};
use lapin::Connection;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::{info, warn};

use crate::broker::{self, Consumer, Failover, InboxPublisher, Journal, OpenChannels, Settler};
use crate::chat21::Limits;
use crate::clock::Backoff;
use crate::config::Config;
use crate::health::Health;
use crate::pipeline::{Completion, JournalCatchUp, Ledger, Recorder, Worker, dispatch};
use crate::plugin::{ChainBuilder, Compiler, PluginsSource, Reloader, Reloads};
use crate::policy::PolicyHandle;
use crate::refusals::Refusals;
use crate::routing::{GroupLookup, Router};
use crate::store::{Persistence, StoredConversations};
use crate::telemetry;
use crate::webhook::Webhooks;

/// Jobs queued per worker before the dispatcher waits; the prefetch bounds the total anyway.
const WORKER_QUEUE_DEPTH: usize = 64;

/// How often a session applies the settle journal (see `trim_journal`).
const JOURNAL_TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the daemon as configured: loads the plugin chain of `config` (compiling what the cache
/// misses with `compiler`), reloads it on SIGHUP and file changes (re-reading `config_path`
/// with `env`), and runs the observer until `shutdown` is cancelled.
///
/// # Errors
/// When the initial plugin chain does not load.
pub async fn serve(
    config: Config,
    config_path: Option<PathBuf>,
    env: HashMap<String, String>,
    metrics: Option<PrometheusHandle>,
    compiler: Compiler,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let health = Health::default();
    announce_chat21_env(&env);
    let refusals = Refusals::new(config.console.recent_refusals, config.console.refusal_bodies);
    let reloads = Reloads::new(config.plugins.clone());
    let (persistence, webhooks) = start_store(&config).await.context("starting the store")?;
    if let Some(metrics) = metrics.clone() {
        tokio::spawn(crate::http::keep_up(metrics, shutdown.child_token()));
    }
    let http = match config.http.address {
        Some(address) => {
            let listener = crate::http::bind(address).await?;
            let history = persistence.as_ref().and_then(|p| {
                crate::history::routes(crate::history::Backend {
                    store: p.store.clone(),
                    groups: p.groups.clone(),
                    app: &config.app_id,
                    auth: &config.auth,
                    broker: &config.broker,
                    max_group_members: config.routing.max_inline_members,
                })
            });
            let console =
                crate::console::routes(config.console_setup(), metrics.clone(), refusals.clone(), reloads.clone());
            let routes = history.into_iter().chain(console).reduce(axum::Router::merge);
            let (limits, stop) = (config.http.clone(), shutdown.child_token());
            Some(tokio::spawn(crate::http::serve(listener, limits, metrics, health.clone(), routes, stop)))
        }
        None => None,
    };
    let builder = Arc::new(ChainBuilder::new(config.pipeline.workers, compiler));
    let plugins = config.plugins.clone();
    let chain = {
        let builder = Arc::clone(&builder);
        tokio::task::spawn_blocking(move || builder.build(&plugins)).await.context("the chain builder panicked")??
    };
    telemetry::chain_loaded(chain.len(), "startup", started.elapsed());
    let handle = PolicyHandle::new(Arc::new(chain));
    let source: PluginsSource = {
        let path = config_path.clone();
        Box::new(move || Ok(Config::load(path.as_deref(), &env)?.plugins))
    };
    let reloader = Reloader::new(builder, handle.clone(), config_path, source, reloads);
    let plugins = config.plugins.clone();
    let stop_reloading = shutdown.child_token();
    let reloading = {
        let stop = stop_reloading.clone();
        tokio::spawn(async move { reloader.run(&plugins, stop).await })
    };
    let result = run(config, handle, health, refusals, persistence.as_ref(), webhooks, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(persistence) = persistence {
        persistence.stop().await;
    }
    if let Some(http) = http {
        match http.await {
            Ok(Err(err)) => warn!(error = format!("{err:#}"), "HTTP endpoints failed"),
            Err(err) => warn!(error = %err, "HTTP endpoints panicked"),
            Ok(Ok(())) => {}
        }
    }
    stop_reloading.cancel();
    match reloading.await {
        Ok(Err(err)) => warn!(error = format!("{err:#}"), "plugin reloading stopped"),
        Err(err) => warn!(error = %err, "plugin reloading panicked"),
        Ok(Ok(())) => {}
    }
    result
}

/// Says once, at start, which of chat21's variables in `env` inboxd ignores, and when chat21's
/// `LOG_LEVEL` held a name chat21 does not know (it is never a refusal).
fn announce_chat21_env(env: &HashMap<String, String>) {
    crate::telemetry::chat21_variables_unsupported(&crate::chat21::env::unsupported(env));
    let unknown_level = env.get("LOG_LEVEL").filter(|level| crate::chat21::env::log_level(level).unknown);
    if let Some(level) = unknown_level.filter(|_| !env.contains_key("INBOXD_LOG_LEVEL")) {
        crate::telemetry::chat21_log_level_unknown(level);
    }
}

/// Opens the configured store and starts the webhook delivery on it; `None` when `store.url`
/// is `none`. The webhooks, if any, are what the pipeline writes to the outbox.
///
/// # Errors
/// When the store cannot be opened, migrated or read, or webhooks are on without a store.
async fn start_store(config: &Config) -> anyhow::Result<(Option<Persistence>, Option<Arc<Webhooks>>)> {
    let app = config.app_id.as_str();
    let webhooks = Webhooks::new(&config.webhook, app);
    crate::webhook::announce(&config.webhook);
    let Some(mut persistence) = Persistence::start(&config.store.url, app, config.store.group_cache).await? else {
        anyhow::ensure!(webhooks.is_none(), "webhooks need a store for their outbox (store.url is `none`)");
        return Ok((None, None));
    };
    let delivering = webhooks.is_some();
    if delivering {
        let (store, wake, stop) =
            (persistence.store.clone(), persistence.outbox_written.clone(), persistence.stopping.clone());
        persistence.keep(crate::webhook::deliver::spawn(store, app.to_owned(), config.webhook.clone(), wake, stop));
    }
    persistence.store.unacked_at_most(config.broker.prefetch);
    let (backend, groups_cached) = (persistence.store.backend(), persistence.groups.len());
    info!(backend = ?backend, groups_cached, webhooks = delivering, "store open");
    Ok((Some(persistence), webhooks.map(Arc::new)))
}

/// Runs the observer with `policy` (fixed, or a [`PolicyHandle`] someone else reloads) until
/// `shutdown` is cancelled, then drains and returns. With `persistence`, a delivery is acked
/// only once its store writes (with `webhooks`, its outbox rows too) are durable, and group
/// messages see the stored groups. Rejected and dropped messages are remembered in `refusals`.
///
/// # Errors
/// None today: broker failures are retried forever with backoff. The signature keeps room
/// for fatal setup errors.
pub async fn run(
    config: Config,
    policy: impl Into<PolicyHandle>,
    health: Health,
    refusals: Refusals,
    persistence: Option<&Persistence>,
    webhooks: Option<Arc<Webhooks>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut router = Router::new(&config.app_id, policy.into()).with_rules(config.routing.clone());
    if let Some(persistence) = persistence {
        let (store, writer) = (persistence.store.clone(), persistence.writer.clone());
        let conversations = StoredConversations::new(store, writer, &config.app_id);
        router = router.with_groups(persistence.groups.clone()).with_conversations(Arc::new(conversations));
    }
    let router = Arc::new(router);
    if config.held.key.is_none() {
        telemetry::held_without_secret(broker::HELD_UNSIGNED);
    }
    let recorder = persistence.map(|p| Recorder::new(p.writer.clone(), webhooks));
    let mut backoff = Backoff::new(config.broker.reconnect_initial, config.broker.reconnect_max);
    let mut nodes = Failover::new(&config.broker.urls);
    // Outlives sessions: what one had in flight comes back in the next, and keeps its ids.
    let durable = persistence.filter(|_| config.pipeline.durable_ids).map(|p| p.store.clone());
    let ledger = Arc::new(Ledger::new(&config.app_id, durable));
    loop {
        let groups = persistence.map(|p| Arc::clone(&p.groups) as Arc<dyn GroupLookup>);
        let work = Work { router: &router, ledger: &ledger, recorder: recorder.as_ref(), groups, refusals: &refusals };
        let ended = session(&config, &work, &health, &shutdown, &mut backoff, &mut nodes).await;
        ledger.release_all();
        health.set_not_ready();
        match ended {
            Ok(()) => {
                info!("stopped");
                return Ok(());
            }
            Err(err) => {
                let delay = backoff.next_delay();
                telemetry::session_failed(&err, delay);
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// What every session's workers share.
struct Work<'a> {
    router: &'a Arc<Router>,
    /// The ids of the messages in flight, across sessions.
    ledger: &'a Arc<Ledger>,
    recorder: Option<&'a Recorder>,
    /// The stored groups' directory, told of every group change this session hears.
    groups: Option<Arc<dyn GroupLookup>>,
    refusals: &'a Refusals,
}

/// One connection's worth of work. `Ok` only after a requested shutdown.
async fn session(
    config: &Config,
    work: &Work<'_>,
    health: &Health,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
    nodes: &mut Failover,
) -> anyhow::Result<()> {
    let name = format!("inboxd {} (pid {})", config.app_id, std::process::id());
    let connection = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        connection = nodes.connect(&name) => connection.context("connecting to the broker")?,
    };
    let mut channels = OpenChannels::default();
    // Read on a connection of its own, from the node this one reached (see `Journal`).
    let journal = Journal::new(nodes.clone(), &name, &config.broker.queue);
    let result = consume(config, work, health, shutdown, &connection, journal, &mut channels).await;
    if result.is_ok() {
        backoff.reset();
    }
    // Each channel before the connection: one still closing itself then is logged as an error.
    channels.close(config.pipeline.shutdown_timeout).await;
    // Closing hands every unacked delivery back to the queue.
    let closing = connection.close(200, "inboxd closing".into());
    if tokio::time::timeout(config.pipeline.shutdown_timeout, closing).await.is_err() {
        warn!("connection close timed out");
    }
    result
}

async fn consume(
    config: &Config,
    work: &Work<'_>,
    health: &Health,
    shutdown: &CancellationToken,
    connection: &Connection,
    journal: Journal,
    channels: &mut OpenChannels,
) -> anyhow::Result<()> {
    let broker = &config.broker;
    let setup = connection.create_channel().await.context("opening the setup channel")?;
    channels.add(&setup);
    broker::declare(connection, broker, config.shards.as_ref(), &config.app_id)
        .await
        .context("declaring queues and bindings")?;
    // With durable ids, acks are committed with the settle journal (see `settle_journal`).
    let transactional = work.ledger.is_durable() && work.recorder.is_some();
    let (mut consumer, mut deliveries) =
        Consumer::open(connection, broker, config.shards.as_ref(), transactional).await?;
    consumer.channels().iter().for_each(|channel| channels.add(channel));
    let journaled = settle_journal(journal, work);

    let settling = TaskTracker::new();
    let mut workers = JoinSet::new();
    let mut senders = Vec::with_capacity(config.pipeline.workers);
    for _ in 0..config.pipeline.workers {
        let publisher =
            InboxPublisher::open(connection, &broker.exchange, &broker.dead_letter_queue(), &broker.held_queue())
                .await
                .context("opening a publishing channel")?
                .signing_held_with(config.held.key.clone());
        channels.add(publisher.channel());
        let (tx, rx) = mpsc::channel(WORKER_QUEUE_DEPTH);
        senders.push(tx);
        let sole = consumer.channel().cloned().filter(|_| config.pipeline.workers == 1);
        let settler = Settler::spawn(publisher.clone(), sole, consumer.committer().cloned(), &settling);
        let completion = Completion::new(publisher, work.recorder.cloned());
        let (router, ledger) = (Arc::clone(work.router), Arc::clone(work.ledger));
        let session = ledger.session();
        let worker = Worker { router, ledger, session, completion, settler, refusals: work.refusals.clone() };
        workers.spawn_blocking(move || worker.run(rx));
    }
    telemetry::connected(&broker.queue, config.pipeline.workers, broker.prefetch);
    health.set_ready();

    let limits = Limits {
        max_body_bytes: config.pipeline.max_body_bytes,
        max_inline_members: config.routing.max_inline_members,
    };
    let stop = shutdown.child_token();
    // Aborted when this session ends, however it ends.
    let _watching = AbortOnDropHandle::new(tokio::spawn(broker::watch_held(setup, broker.held_queue(), stop.clone())));
    let _trimming =
        journaled.then(|| AbortOnDropHandle::new(tokio::spawn(trim_journal(Arc::clone(work.ledger), stop.clone()))));
    let _hearing = match &work.groups {
        Some(groups) => {
            let channel = connection.create_channel().await.context("opening the group-update channel")?;
            channels.add(&channel);
            let (exchange, app) = (broker.exchange.clone(), config.app_id.clone());
            let (groups, max_members) = (Arc::clone(groups), config.routing.max_inline_members);
            Some(AbortOnDropHandle::new(tokio::spawn(async move {
                if let Err(err) = broker::watch_groups(channel, exchange, app, groups, max_members).await {
                    warn!(error = %err, "hearing group updates stopped: other processes' changes wait for the store refresh");
                }
            })))
        }
        None => None,
    };
    tokio::select! {
        dispatched = dispatch(&mut deliveries, &senders, &config.app_id, limits, &stop) => dispatched?,
        Some(ended) = workers.join_next() => {
            return Err(ended.map_or_else(|e| anyhow!(e), |r| r.err().unwrap_or_else(|| anyhow!("a worker ended"))));
        }
        rebalanced = consumer.rebalance() => rebalanced?,
    }
    info!("shutting down: draining in-flight deliveries");
    // With shards, a hand-over replaced some of the channels.
    consumer.channels().iter().for_each(|channel| channels.add(channel));
    // The deliveries' stream lives until the drain is over: dropping lapin's consumer sends a
    // cancel of its own, past the committer's lock, and a cancel that meets a commit under way on
    // a transactional channel closes the connection (CHANNEL_ERROR), failing the drain.
    let drained = drain(&consumer, senders, workers, settling, config.pipeline.shutdown_timeout).await;
    drop(deliveries);
    drained
}

/// With durable ids (and so a store), the consuming channels are in transaction mode and
/// commit each batch of acks with its settle-journal marker; this gives the ledger the journal's
/// catch-up, which deletes the intents the markers name. Whether there is a journal (otherwise
/// the ledger's catch-up is cleared).
fn settle_journal(journal: Journal, work: &Work<'_>) -> bool {
    let Some(recorder) = work.recorder.filter(|_| work.ledger.is_durable()) else {
        work.ledger.set_catch_up(None);
        return false;
    };
    let catch_up = JournalCatchUp::new(journal, recorder.writer().clone(), tokio::runtime::Handle::current());
    work.ledger.set_catch_up(Some(Arc::new(catch_up)));
    true
}

/// Every [`JOURNAL_TRIM_EVERY`], applies and removes what the settle journal holds: the intents
/// of the messages acked since are deleted in one store transaction (the journal is how intents
/// are deleted), and a catch-up after a restart reads a second's markers.
async fn trim_journal(ledger: Arc<Ledger>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(JOURNAL_TRIM_EVERY) => {}
        }
        let ledger = Arc::clone(&ledger);
        // Failures are logged; the next trim, or the next catch-up, tries again.
        let _ = tokio::task::spawn_blocking(move || ledger.catch_up()).await;
    }
}

/// Stops consuming, lets the workers finish their queues and waits for the last confirms and acks.
async fn drain(
    consumer: &Consumer<'_>,
    senders: Vec<mpsc::Sender<crate::pipeline::Job>>,
    mut workers: JoinSet<anyhow::Result<()>>,
    settling: TaskTracker,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    consumer.cancel().await;
    drop(senders);
    let finish = async {
        while let Some(ended) = workers.join_next().await {
            ended.context("a worker panicked")??;
        }
        settling.close();
        settling.wait().await;
        anyhow::Ok(())
    };
    match tokio::time::timeout(timeout, finish).await {
        Ok(result) => result,
        Err(_) => {
            warn!(timeout_ms = timeout.as_millis() as u64, "drain timed out; the rest will be redelivered");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiledesk's compose block for chat21-server, and chat21-http-server's variables.
    #[test]
    fn chat21_variables_inboxd_ignores_are_named_in_one_warning() {
        let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let tiledesk = env(&[
            ("LOG_LEVEL", "info"),
            ("MONGODB_URI", "mongodb://mongo/chat21"),
            ("APP_ID", "tilechat"),
            ("WEBHOOK_ENABLED", "true"),
            ("JWT_KEY", "tokenKey"),
            ("PUSH_ENABLED", "true"),
        ]);
        let logged = crate::telemetry::captured(|| announce_chat21_env(&tiledesk));
        assert_eq!(logged.lines().count(), 1, "{logged}");
        assert!(logged.contains("variables=\"MONGODB_URI,JWT_KEY,PUSH_ENABLED\""), "{logged}");
        assert!(logged.contains("inboxd import chat21") && logged.contains("INBOXD_AUTH_SECRET"), "{logged}");
        let own = env(&[("LOG_LEVEL", "info"), ("RABBITMQ_URI", "amqp://x"), ("WEBHOOK_EVENTS", "message-sent")]);
        assert!(crate::telemetry::captured(|| announce_chat21_env(&own)).is_empty());
        let loud = crate::telemetry::captured(|| announce_chat21_env(&env(&[("LOG_LEVEL", "loud")])));
        assert!(loud.contains("LOG_LEVEL is no chat21 level") && loud.contains("value=\"loud\""), "{loud}");
    }
}
