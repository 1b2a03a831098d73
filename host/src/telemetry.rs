//! Logging setup and one function per pipeline event, each logging and counting together.
//! Labels are bounded (event kind, outcome, reason code), never a user, topic or message id.
//!
//! A leaf: its functions take labels, counts, text and durations (errors as anything that
//! displays), never another module's types, so every module may report through it.

use std::fmt::Display;
use std::time::Duration;

use metrics::{Counter, Histogram, counter, histogram};
use tracing::{Span, debug, error, info, info_span, warn};
use tracing_subscriber::EnvFilter;

/// How log lines are written (`[log] format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// Installs the global tracing subscriber; `RUST_LOG` wins over the configured level.
///
/// # Errors
/// When the level is not a valid filter directive or a subscriber is already installed.
pub fn init(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives)?,
        _ => EnvFilter::try_new(level)?,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
    .map_err(|e| anyhow::anyhow!(e))
}

/// A delivery was routed: published copies, rejected, dropped or nothing to do. `outcome` is
/// the outcome's label; `plugin` and `code` name who decided it (empty when nobody did).
pub fn routed(
    kind: &'static str,
    message_id: &str,
    outcome: &'static str,
    (plugin, code): (&str, &str),
    copies: usize,
    redelivered: bool,
) {
    match outcome {
        "rejected" => info!(kind, message_id, plugin = %plugin, code = %code, "message rejected by policy"),
        "dropped" => info!(kind, message_id, "message dropped by policy"),
        "held" => info!(kind, message_id, plugin = %plugin, "message held by policy"),
        "deferred" => {
            warn!(kind, message_id, plugin = %plugin, "message deferred: a plugin or the group directory could not answer, requeued");
        }
        _ => {}
    }
    if kind == "presence" {
        debug!("presence change");
    }
    debug!(kind, message_id, outcome, copies, redelivered, "routed");
    counter!("inboxd_messages_total", "kind" => kind, "outcome" => outcome).increment(1);
    counter!("inboxd_copies_published_total").increment(copies as u64);
}

/// Refused input was sent to the dead-letter queue with reason `reason`.
pub fn dead_lettered(reason: &'static str, err: &dyn Display, routing_key: &str) {
    warn!(reason, error = %err, routing_key, "dead-lettered");
    counter!("inboxd_dead_lettered_total", "reason" => reason).increment(1);
}

/// Publishes were not confirmed; the delivery goes back to the queue.
pub fn unconfirmed(err: &dyn Display) {
    warn!(error = %err, "publish not confirmed, delivery requeued");
    counter!("inboxd_unconfirmed_total").increment(1);
}

/// An ack could not be sent (the channel is gone; the broker will redeliver).
pub fn ack_failed(err: &dyn Display) {
    debug!(error = %err, "ack failed, delivery will be redelivered");
}

/// A consuming channel's transaction committed `acks` acks with the marker of `ids` message ids
/// (`inboxd_settle_commits_total` per commit, so commits per message is its ratio to
/// `inboxd_messages_total`).
pub fn settle_committed(acks: usize, ids: usize) {
    debug!(acks, ids, "settle committed");
    counter!("inboxd_settle_commits_total").increment(1);
}

/// The broker connection is up and consuming.
pub fn connected(queue: &str, workers: usize, prefetch: u16) {
    info!(queue, workers, prefetch, "connected and consuming");
}

/// The session with the broker ended with an error; a reconnect follows.
pub fn session_failed(err: &dyn Display, retry_in: Duration) {
    warn!(error = format!("{err:#}"), retry_in_ms = retry_in.as_millis() as u64, "broker session lost, reconnecting");
    counter!("inboxd_reconnects_total").increment(1);
}

/// Hooks and call outcomes, the bounded label values of `inboxd_plugin_calls_total`.
const HOOKS: [&str; 2] = ["on-message", "on-deliver"];
const OUTCOMES: [&str; 6] = ["accept", "modify", "reject", "drop", "hold", "failed"];

/// One plugin's call counters, registered when its chain is built so a call costs an atomic
/// add, not a registry lookup.
pub struct PluginCounters {
    calls: [[Counter; OUTCOMES.len()]; HOOKS.len()],
    /// `inboxd_plugin_call_seconds{plugin,hook}`.
    latency: [Histogram; HOOKS.len()],
}

impl PluginCounters {
    pub fn new(plugin: &str) -> PluginCounters {
        let calls = HOOKS.map(|hook| {
            OUTCOMES.map(|outcome| {
                counter!("inboxd_plugin_calls_total", "plugin" => plugin.to_owned(), "hook" => hook, "outcome" => outcome)
            })
        });
        let latency =
            HOOKS.map(|hook| histogram!("inboxd_plugin_call_seconds", "plugin" => plugin.to_owned(), "hook" => hook));
        PluginCounters { calls, latency }
    }

    fn count(&self, hook: &str, outcome: &str, elapsed: Duration) {
        let hook = HOOKS.iter().position(|h| *h == hook).unwrap_or(0);
        let outcome = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(OUTCOMES.len() - 1);
        self.calls[hook][outcome].increment(1);
        self.latency[hook].record(elapsed.as_secs_f64());
    }
}

/// One plugin call answered (per message and plugin: debug only).
pub fn plugin_called(
    counters: &PluginCounters,
    plugin: &str,
    digest: &str,
    hook: &'static str,
    outcome: &'static str,
    elapsed: Duration,
) {
    debug!(plugin, digest, hook, outcome, elapsed_us = elapsed.as_micros() as u64, "plugin called");
    counters.count(hook, outcome, elapsed);
}

/// A plugin trapped, timed out, ran out of memory or fuel, or answered nonsense.
pub fn plugin_failed(
    counters: &PluginCounters,
    plugin: &str,
    digest: &str,
    hook: &'static str,
    (kind, detail): (&'static str, &str),
    mode: &'static str,
) {
    warn!(plugin, digest, hook, kind, mode, detail = %detail, "plugin failed");
    counters.count(hook, "failed", Duration::ZERO);
    counter!("inboxd_plugin_failures_total", "plugin" => plugin.to_owned(), "kind" => kind, "mode" => mode)
        .increment(1);
}

/// A plugin call reached its wall-clock ceiling with CPU budget left (its thread was not
/// scheduled): it is made once more. Not a failure of the plugin.
pub fn plugin_call_retried(plugin: &str, digest: &str, hook: &'static str, (kind, detail): (&'static str, &str)) {
    warn!(plugin, digest, hook, kind, detail = %detail, "plugin call cut short, retrying");
    counter!("inboxd_plugin_retries_total", "plugin" => plugin.to_owned(), "kind" => kind).increment(1);
}

/// A plugin call was cut short by its wall-clock ceiling twice: the message is requeued, and no
/// failure mode applies (`inboxd_plugin_failures_total{kind="ceiling",mode="deferred"}`).
pub fn plugin_deferred(
    counters: &PluginCounters,
    plugin: &str,
    digest: &str,
    hook: &'static str,
    (kind, detail): (&'static str, &str),
) {
    warn!(plugin, digest, hook, kind, mode = "deferred", detail = %detail, "plugin failed");
    counters.count(hook, "failed", Duration::ZERO);
    counter!("inboxd_plugin_failures_total", "plugin" => plugin.to_owned(), "kind" => kind, "mode" => "deferred")
        .increment(1);
}

/// A plugin's counter key space is full of live windows; the oldest ones restart early.
pub fn plugin_counters_full(plugin: &str) {
    warn!(plugin, "plugin counter space full, evicting the oldest live windows");
    counter!("inboxd_plugin_counter_evictions_total", "plugin" => plugin.to_owned()).increment(1);
}

/// A plugin was compiled (or taken from the cache), linked and initialised.
pub fn plugin_loaded(plugin: &str, digest: &str, cache: &'static str, elapsed: Duration) {
    info!(plugin, digest, cache, elapsed_ms = elapsed.as_millis() as u64, "plugin loaded");
}

/// A new chain is in force.
pub fn chain_loaded(plugins: usize, trigger: &str, elapsed: Duration) {
    info!(plugins, trigger, elapsed_ms = elapsed.as_millis() as u64, "policy chain loaded");
    counter!("inboxd_policy_reloads_total", "outcome" => "ok").increment(1);
}

/// A reload failed; the running chain stays in force.
pub fn reload_failed(err: &dyn Display, trigger: &str) {
    error!(error = format!("{err:#}"), trigger, "policy reload failed, keeping the running chain");
    counter!("inboxd_policy_reloads_total", "outcome" => "failed").increment(1);
}

/// Every publish of a delivery was confirmed, `elapsed` after the first was handed to the channel.
pub fn confirmed(elapsed: Duration) {
    histogram!("inboxd_publish_confirm_seconds").record(elapsed.as_secs_f64());
}

/// Messages waiting in the held queue for a moderator.
pub fn held_depth(messages: u32) {
    metrics::gauge!("inboxd_held_messages").set(f64::from(messages));
}

/// How many shard queues this process is the active consumer of (sharded mode).
pub fn shards_owned(count: usize) {
    metrics::gauge!("inboxd_shards_owned").set(count as f64);
}

/// A shard was handed over to another process: its deliveries in hand were settled within
/// `settled`, and the whole move (close, subscribe again) took `total`.
pub fn shard_handed_over(queue: &str, settled: Duration, total: Duration) {
    info!(
        queue,
        settled_ms = settled.as_millis() as u64,
        total_ms = total.as_millis() as u64,
        "shard handed over to the next process"
    );
    counter!("inboxd_shard_handovers_total").increment(1);
}

/// A batch of store writes committed.
pub fn store_committed(rows: usize, elapsed: Duration) {
    debug!(rows, elapsed_ms = elapsed.as_millis() as u64, "store batch committed");
    counter!("inboxd_store_rows_total").increment(rows as u64);
    histogram!("inboxd_store_commit_seconds").record(elapsed.as_secs_f64());
}

/// SQLite's log was synced for `commits` commits (their deliveries may now be acked).
pub fn store_synced(commits: u64) {
    counter!("inboxd_store_syncs_total").increment(1);
    counter!("inboxd_store_synced_commits_total").increment(commits);
}

/// Copying SQLite's log into the database failed; the next checkpoint tries again.
pub fn checkpoint_failed(err: &dyn Display) {
    warn!(error = %err, "checkpointing the store's log failed; the next checkpoint tries again");
}

/// Syncing SQLite's log failed: the deliveries of its `commits` are redelivered, and the next
/// sync waits `retry_in`.
pub fn store_sync_failed(err: &dyn Display, commits: u64, retry_in: Duration) {
    error!(
        error = %err,
        commits,
        retry_in_ms = retry_in.as_millis() as u64,
        "syncing the store's log failed; its deliveries are redelivered"
    );
    counter!("inboxd_store_sync_failures_total").increment(1);
}

/// A store batch failed; it is retried after `retry_in` and the deliveries wait unacked.
pub fn store_failed(err: &dyn Display, retry_in: Duration) {
    warn!(error = %err, retry_in_ms = retry_in.as_millis() as u64, "store write failed, retrying");
    counter!("inboxd_store_failures_total").increment(1);
}

/// The database refused a batch's data: it is split to find the refused deliveries.
pub fn store_batch_split(deliveries: usize, err: &dyn Display) {
    debug!(deliveries, error = %err, "store refused a batch, splitting it");
}

/// The database refused one delivery's writes; the rest of its batch is committed, and the
/// delivery is dead-lettered.
pub fn store_refused(err: &dyn Display) {
    error!(error = %err, "store refused a delivery's writes");
    counter!("inboxd_store_refused_total").increment(1);
}

/// SQLite's history thread: the history writes of `commits` queued commits were applied to the
/// tables.
pub fn history_applied(commits: usize, elapsed: Duration) {
    debug!(commits, elapsed_ms = elapsed.as_millis() as u64, "queued history applied");
    counter!("inboxd_store_history_applied_total").increment(commits as u64);
}

/// The database refused a queued history write when it was applied (an operator's trigger or
/// constraint): the message was delivered, its history row is left out.
pub fn history_refused(err: &dyn Display, inbox: &str, key: &str) {
    error!(error = %err, inbox, key, "store refused a history write; it is left out of the history");
    counter!("inboxd_store_refused_total").increment(1);
}

/// A redelivered message took the id another process (or this one before a restart) gave it,
/// from the store's intents.
pub fn intent_recovered(message_id: &str) {
    debug!(message_id, "redelivered message keeps the id of its stored intent");
    counter!("inboxd_intents_recovered_total").increment(1);
}

/// The store could not be asked for a redelivered message's intent: it gets a new id.
pub fn intent_lookup_failed(err: &dyn Display) {
    warn!(error = %err, "looking up a redelivered message's intent failed; it gets a new id");
    counter!("inboxd_intent_lookup_failures_total").increment(1);
}

/// A worker had a delivery of a broker session that has ended: dropped unhandled (the broker
/// delivers it again in the next session, which claims its id).
pub fn dead_session_delivery_dropped() {
    debug!("a delivery of a broker session that has ended was dropped; it comes back in the next");
}

/// The settle journal's markers named acked messages: their intents are deleted now.
pub fn journal_applied(ids: usize) {
    debug!(ids, "settle journal applied: intents of acked messages deleted");
    counter!("inboxd_journal_applied_total").increment(ids as u64);
}

/// A redelivery this process did not know has the store caught up with the journal before it
/// looks up its id: a whole catch-up, on its worker, each time.
pub fn redelivery_catch_up() {
    counter!("inboxd_redelivery_catch_ups_total").increment(1);
}

/// The settle journal could not be read or applied: redeliveries wait for it (see
/// [`journal_unreadable`]).
pub fn journal_failed(err: &dyn Display) {
    warn!(error = %err, "catching up with the settle journal failed; redeliveries wait for it before they look up their ids");
}

/// Catching up with the settle journal failed again (`attempts` so far in this outage).
pub fn journal_still_failing(err: &dyn Display, attempts: u64) {
    debug!(error = %err, attempts, "catching up with the settle journal failed again");
}

/// The settle journal was caught up with again, after `attempts` failures over `lasted`.
pub fn journal_recovered(attempts: u64, lasted: Duration) {
    info!(attempts, lasted_ms = lasted.as_millis(), "caught up with the settle journal again");
}

/// The settle journal stayed unreadable for `patience`: redeliveries get new ids until a
/// catch-up succeeds again. Warned for the `first` of an outage; all are counted.
pub fn journal_unreadable(patience: Duration, first: bool) {
    if first {
        warn!(
            patience_s = patience.as_secs(),
            "the settle journal could not be read for too long; redeliveries get new ids until it can \
             (counted in inboxd_intent_lookup_failures_total)"
        );
    } else {
        debug!("the settle journal is still unreadable; this redelivery gets a new id");
    }
    counter!("inboxd_intent_lookup_failures_total").increment(1);
}

/// A failure closed the settle journal's channel (`reconnected`: its connection too): opened
/// again.
pub fn journal_reopened(reconnected: bool) {
    info!(reconnected, "the settle journal's channel was closed by a failure; opened again");
}

/// Intents that waited their whole expiry for a redelivery were deleted.
pub fn intents_expired(count: u64) {
    info!(count, "expired message intents deleted");
}

/// Sweeping the expired intents failed (tried again at the next sweep).
pub fn intents_sweep_failed(err: &dyn Display) {
    warn!(error = %err, "sweeping expired message intents failed");
}

/// An MQTT client retransmitted (QoS 1, DUP) a message inboxd has delivered or is delivering:
/// acked without publishing it again.
pub fn retransmission_dropped(message_id: &str) {
    debug!(message_id, "retransmission of a message delivered already");
    counter!("inboxd_retransmissions_dropped_total").increment(1);
}

/// The span of one delivery, which every log line about it carries (with OpenTelemetry's
/// messaging-consumer fields); `message_id` is recorded once routing has given the message one.
pub fn delivery_span(app_id: &str, sender: &str, recipient: &str) -> Span {
    info_span!(
        "delivery",
        app_id,
        sender,
        recipient,
        message_id = tracing::field::Empty,
        otel.kind = "consumer",
        messaging.system = "rabbitmq"
    )
}

/// A delivery went to the dead-letter queue as it was settled (`store-refused`: the store refused its writes).
pub fn dead_lettered_when_settled(reason: &'static str, routing_key: &str, detail: &str) {
    warn!(reason, error = detail, routing_key, "dead-lettered");
    counter!("inboxd_dead_lettered_total", "reason" => reason).increment(1);
}

/// The history API refused a request without a valid token (`code`: why, bounded); the client
/// only sees chat21's `Unauthorized.`, so the reason is here.
pub fn api_unauthenticated(code: &'static str, why: &str) {
    info!(code, why, "history API request without a valid token");
    counter!("inboxd_api_unauthenticated_total", "reason" => code).increment(1);
}

/// Routing read a group that was not cached from the store: `found` or `absent`.
pub fn group_read(outcome: &'static str) {
    debug!(outcome, "group read from the store");
    counter!("inboxd_group_reads_total", "outcome" => outcome).increment(1);
}

/// A group that was not cached could not be read; routing went on as if it were not stored.
pub fn group_read_failed(error: &str) {
    warn!(error, "reading a group from the store failed");
    counter!("inboxd_group_reads_total", "outcome" => "failed").increment(1);
}

/// An archive's conversation could not be read from the store; the archive is requeued.
pub fn conversation_read_failed(error: &str) {
    warn!(error, "reading a conversation from the store failed");
    counter!("inboxd_conversation_reads_failed_total").increment(1);
}

/// A webhook event was delivered after `attempts` attempts.
pub fn webhook_sent(event: &str, attempts: i64) {
    debug!(event, attempts, "webhook delivered");
    counter!("inboxd_webhooks_total", "outcome" => "delivered").increment(1);
}

/// A webhook attempt failed; `dead` when it was the last one (the event is dead-lettered).
/// `endpoint` must come redacted (its path carries a token in real deployments).
pub fn webhook_failed(event: &str, endpoint: &str, error: &str, dead: bool) {
    if dead {
        error!(event, endpoint = %endpoint, error, "webhook dead-lettered after its last attempt");
        counter!("inboxd_webhooks_total", "outcome" => "dead").increment(1);
    } else {
        debug!(event, endpoint = %endpoint, error, "webhook attempt failed, will retry");
        counter!("inboxd_webhooks_total", "outcome" => "retried").increment(1);
    }
}

/// The endpoint answered an event with a final 4xx (it does not want it): dropped, not retried.
/// `endpoint` must come redacted.
pub fn webhook_rejected(event: &str, endpoint: &str, status: u16) {
    info!(event, endpoint = %endpoint, status, "webhook rejected by the endpoint");
    counter!("inboxd_webhooks_total", "outcome" => "rejected").increment(1);
}

/// A configured webhook event that is never sent, and why (said once, at start).
pub fn webhook_event_never_sent(event: &str, why: &str) {
    warn!(event, why, "webhook event configured but never sent");
}

/// A name in chat21's `WEBHOOK_EVENTS` that is no event, ignored as chat21-server ignores it;
/// `closest`: the known name it likely misspells.
pub fn webhook_event_ignored(name: &str, closest: Option<&str>) {
    match closest {
        Some(closest) => warn!(name, closest, "WEBHOOK_EVENTS names an unknown event, ignored: a typo of the closest?"),
        None => warn!(name, "WEBHOOK_EVENTS names an unknown event, ignored"),
    }
}

/// chat21 environment variables inboxd does not read: all of them named in one warning, each
/// with what to use instead.
pub fn chat21_variables_unsupported(variables: &[(&str, &str)]) {
    if variables.is_empty() {
        return;
    }
    let names: Vec<&str> = variables.iter().map(|(name, _)| *name).collect();
    let instead: Vec<String> = variables.iter().map(|(name, instead)| format!("{name}: {instead}")).collect();
    warn!(
        variables = names.join(","),
        instead = instead.join("; "),
        "chat21 environment variables inboxd does not support, ignored"
    );
}

/// chat21's `LOG_LEVEL` holds a name chat21's logger does not know; like chat21, inboxd logs
/// everything (debug).
pub fn chat21_log_level_unknown(value: &str) {
    warn!(value, "LOG_LEVEL is no chat21 level (DEBUG, VERBOSE, LOG, INFO, ERROR): logging at debug, as chat21 does");
}

/// The webhook outbox could not be read or updated; the task tries again.
pub fn webhook_outbox_failed(err: &dyn Display) {
    warn!(error = %err, "webhook outbox unavailable");
}

/// `[held] secret` is not set: a held message could never be released, so it is dead-lettered
/// (reason `reason`: `held-unsigned`).
pub fn held_without_secret(reason: &'static str) {
    warn!(
        reason,
        "held.secret is not set: messages a plugin holds go to the dead-letter queue instead of the held queue"
    );
}

/// A plugin held a message on a daemon without `[held] secret`; it was dead-lettered (reason
/// `reason`: `held-unsigned`).
pub fn hold_unsigned(reason: &'static str, plugin: &str, message_id: &str) {
    warn!(plugin, message_id, reason, "held message dead-lettered: no held.secret");
    counter!("inboxd_dead_lettered_total", "reason" => reason).increment(1);
}

/// A queue exists with other arguments than inboxd's (its length limit or queue type): it is used
/// as it is.
pub fn queue_limit_not_applied(queue: &str, err: &dyn Display) {
    warn!(
        queue,
        error = %err,
        "queue exists with other arguments (e.g. created without a length limit, or of another queue type): it is \
         used as it is; set a limit with an operator policy, or delete the queue once it is empty to have it \
         declared anew (README \"Bad input\")"
    );
}

/// Handling a delivery panicked (a bug); it was dead-lettered (reason `reason`:
/// `internal-error`) and the pipeline goes on.
pub fn panicked(reason: &'static str, message: &str, routing_key: &str) {
    error!(reason, panic = message, routing_key, "handling panicked, dead-lettered");
    counter!("inboxd_dead_lettered_total", "reason" => reason).increment(1);
}

/// What `run` logs (every level), without colours: for tests of what reaches the log.
#[cfg(test)]
pub fn captured(run: impl FnOnce()) -> String {
    use std::sync::{Arc, Mutex, PoisonError};

    struct Writer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Writer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let logged = Arc::new(Mutex::new(Vec::new()));
    let writer = Arc::clone(&logged);
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || Writer(Arc::clone(&writer)))
        .finish();
    tracing::subscriber::with_default(subscriber, run);
    let bytes = logged.lock().unwrap_or_else(PoisonError::into_inner).clone();
    String::from_utf8_lossy(&bytes).into_owned()
}
