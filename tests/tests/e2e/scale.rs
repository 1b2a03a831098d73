//! Scale-out: inboxd processes sharing shard queues, on one node and on a 3-node cluster. Every
//! conversation arrives complete and in send order through shard hand-overs, a SIGKILLed process
//! and a stopped broker node; duplicates (at-least-once) are counted and reported.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use inboxd_e2e::daemon::{Process, free_address, http_get};
use inboxd_e2e::{Cluster, ConnectOptions, MqttUser, PrivateNode, shared_node, unique_id};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::json;

/// Shard queues in these tests.
const SHARDS: usize = 8;
/// Sender → recipient pairs (conversations) sending at once.
const PAIRS: usize = 16;
/// Bound for a round of messages to arrive, crashes included.
const ROUND_WAIT: Duration = Duration::from_secs(120);
/// Bound for shards to settle on every process.
const SETTLE_WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_dead_node_in_the_broker_list_is_skipped() -> Result<()> {
    let node = shared_node().await?;
    let app = unique_id("app");
    let closed = free_address()?;
    let dead = format!("amqp://observer:observer@{closed}/%2f");
    let env = sharded_env(&[dead, node.amqp_url()], &app, 0);
    let daemon = inboxd_e2e::daemon::InProcess::start(node, env).await.context("setup failed: inboxd")?;
    let mut pairs = Pairs::connect(node, &app, 1).await?;
    pairs.send(0..3).await?;
    let duplicates = pairs.receive(0..3, ROUND_WAIT).await?;
    ensure!(duplicates == 0, "{duplicates} duplicates without a failure");
    daemon.stop().await
}

#[tokio::test]
async fn two_processes_share_the_shards_and_keep_each_conversation_in_order() -> Result<()> {
    let node = shared_node().await?;
    let app = unique_id("app");
    let urls = [node.amqp_url()];
    let mut daemons = Vec::new();
    for _ in 0..2 {
        daemons.push(Daemon::spawn(node, &urls, &app, "classic").await?);
    }
    wait_subscribed(node, &app, 2).await?;
    let mut pairs = Pairs::connect(node, &app, PAIRS).await?;
    pairs.send(0..50).await?;
    let duplicates = pairs.receive(0..50, ROUND_WAIT).await?;
    ensure!(duplicates == 0, "{duplicates} duplicates without a failure");
    let owned = wait_balanced(&daemons).await?;
    eprintln!("scale: 2 processes own {owned:?} of {SHARDS} shards");
    pairs.send(50..100).await?;
    let duplicates = pairs.receive(50..100, ROUND_WAIT).await?;
    ensure!(duplicates == 0, "{duplicates} duplicates without a failure");
    Ok(())
}

#[tokio::test]
async fn a_cluster_loses_nothing_to_a_killed_process_or_a_stopped_node() -> Result<()> {
    let started = Instant::now();
    let mut cluster = Cluster::start(3).await.context("setup failed: cluster")?;
    eprintln!("scale: 3-node cluster up in {:?}", started.elapsed());
    let app = unique_id("app");
    let urls = cluster.amqp_urls();
    let mut daemons = Vec::new();
    for k in 0..3 {
        // Process k prefers node k.
        let rotated: Vec<String> = (0..3).map(|i| urls[(k + i) % 3].clone()).collect();
        daemons.push(Daemon::spawn(cluster.node(0), &rotated, &app, "quorum").await?);
    }
    wait_subscribed(cluster.node(0), &app, 3).await?;
    let owned = wait_balanced(&daemons).await?;
    eprintln!("scale: 3 processes own {owned:?} of {SHARDS} shards before any traffic");
    let mut pairs = Pairs::connect(cluster.node(0), &app, PAIRS).await?;

    pairs.send(0..50).await?;
    let duplicates = pairs.receive(0..50, ROUND_WAIT).await?;
    ensure!(duplicates == 0, "{duplicates} duplicates without a failure");

    // SIGKILL the process owning the most shards while a round is in flight.
    let busiest = busiest(&daemons).await?;
    let sending = pairs.send_in_background(50..150);
    pairs.first_arrivals(50).await?;
    let killed = Instant::now();
    daemons.remove(busiest).kill().await?;
    sending.await.context("the sender task panicked")??;
    let duplicates = pairs.receive(50..150, ROUND_WAIT).await?;
    eprintln!(
        "scale: process {busiest} SIGKILLed mid-stream: the round completed {:?} after the kill, {duplicates} duplicates",
        killed.elapsed()
    );
    let owned = wait_balanced(&daemons).await?;
    eprintln!("scale: 2 processes own {owned:?} after the kill");

    // Stop node 2 (a process and a share of the quorum leaders are there) while a round is in flight.
    let sending = pairs.send_in_background(150..250);
    pairs.first_arrivals(150).await?;
    let stopped = Instant::now();
    cluster.node_mut(2).stop().await?;
    let stop_took = stopped.elapsed();
    sending.await.context("the sender task panicked")??;
    let duplicates = pairs.receive(150..250, ROUND_WAIT).await?;
    eprintln!(
        "scale: node 2 stopped mid-stream (stop took {stop_took:?}): the round completed {:?} after, {duplicates} duplicates",
        stopped.elapsed()
    );
    Ok(())
}

/// The environment of a sharded inboxd on `urls` (`shards` 0: unsharded).
fn sharded_env(urls: &[String], app: &str, shards: usize) -> HashMap<String, String> {
    HashMap::from([
        ("INBOXD_BROKER_URLS".to_owned(), urls.join(",")),
        ("INBOXD_APP_ID".to_owned(), app.to_owned()),
        ("INBOXD_BROKER_RECONNECT_MAX_MS".to_owned(), "1000".to_owned()),
        ("INBOXD_HTTP_ADDRESS".to_owned(), String::new()),
        ("INBOXD_SHARDS_COUNT".to_owned(), shards.to_string()),
        ("INBOXD_SHARDS_REBALANCE_MS".to_owned(), "300".to_owned()),
        ("INBOXD_PIPELINE_WORKERS".to_owned(), "4".to_owned()),
    ])
}

/// A real inboxd process and its metrics address.
struct Daemon {
    process: Process,
    metrics: SocketAddr,
}

impl Daemon {
    async fn spawn(node: &PrivateNode, urls: &[String], app: &str, queue_type: &str) -> Result<Daemon> {
        let metrics = free_address()?;
        let mut env = sharded_env(urls, app, SHARDS);
        env.insert("INBOXD_SHARDS_QUEUE_TYPE".into(), queue_type.into());
        env.insert("INBOXD_HTTP_ADDRESS".into(), metrics.to_string());
        let process = Process::spawn(node, &shard_queue(app, 0), &env).await.context("setup failed: inboxd")?;
        Ok(Daemon { process, metrics })
    }

    /// `inboxd_shards_owned` (0 until the first rebalance tick).
    async fn owned(&self) -> Result<u32> {
        let (status, body) = http_get(self.metrics, "/metrics").await?;
        ensure!(status == 200, "/metrics answered {status}");
        let line = body.lines().find(|l| l.starts_with("inboxd_shards_owned "));
        Ok(line.and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u32)
    }

    async fn kill(self) -> Result<()> {
        self.process.signal_and_wait(libc::SIGKILL).await.map(drop)
    }
}

fn shard_queue(app: &str, index: usize) -> String {
    format!("inboxd.{app}.shard.{index}")
}

/// Waits until every shard queue has `processes` consumers.
async fn wait_subscribed(node: &PrivateNode, app: &str, processes: u32) -> Result<()> {
    let connection = Connection::connect(&node.amqp_url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let deadline = Instant::now() + SETTLE_WAIT;
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    'wait: loop {
        ensure!(Instant::now() < deadline, "the shards do not have {processes} consumers each");
        for index in 0..SHARDS {
            let declared =
                channel.queue_declare(shard_queue(app, index).as_str().into(), passive, FieldTable::default());
            if declared.await?.consumer_count() < processes {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'wait;
            }
        }
        return Ok(());
    }
}

/// Waits until every process owns a share (all shards owned, each process at least one);
/// returns the shares.
async fn wait_balanced(daemons: &[Daemon]) -> Result<Vec<u32>> {
    let deadline = Instant::now() + SETTLE_WAIT;
    let fair = SHARDS.div_ceil(daemons.len()) as u32;
    loop {
        let mut owned = Vec::new();
        for daemon in daemons {
            owned.push(daemon.owned().await?);
        }
        if owned.iter().sum::<u32>() == SHARDS as u32 && owned.iter().all(|&n| n >= 1 && n <= fair) {
            return Ok(owned);
        }
        if Instant::now() > deadline {
            bail!("shards not spread over the processes within {SETTLE_WAIT:?}: {owned:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn busiest(daemons: &[Daemon]) -> Result<usize> {
    let mut best = (0, 0);
    for (i, daemon) in daemons.iter().enumerate() {
        let owned = daemon.owned().await?;
        if owned > best.1 {
            best = (i, owned);
        }
    }
    Ok(best.0)
}

/// Conversations: sender `s<i>` writes to recipient `r<i>`, whose inbox is subscribed.
struct Pairs {
    senders: Vec<std::sync::Arc<MqttUser>>,
    recipients: Vec<Recipient>,
}

struct Recipient {
    user: MqttUser,
    /// The highest sequence number received so far, if any.
    highest: Option<usize>,
}

impl Pairs {
    async fn connect(node: &PrivateNode, app: &str, pairs: usize) -> Result<Pairs> {
        let mut senders = Vec::new();
        let mut recipients = Vec::new();
        for i in 0..pairs {
            let options = ConnectOptions::default();
            let sender = MqttUser::connect(node, &format!("s{i}"), app, options.clone())
                .await
                .context("setup failed: connecting a sender")?;
            senders.push(std::sync::Arc::new(sender));
            let user = MqttUser::connect(node, &format!("r{i}"), app, options)
                .await
                .context("setup failed: connecting a recipient")?;
            user.subscribe_inbox().await.context("setup failed: subscribing")?;
            recipients.push(Recipient { user, highest: None });
        }
        Ok(Pairs { senders, recipients })
    }

    /// Every sender publishes `seqs` to its recipient, in order, all senders at once; each
    /// publish is acknowledged by the broker (accepted) before the next.
    async fn send(&self, seqs: Range<usize>) -> Result<()> {
        send_all(self.senders.clone(), seqs).await
    }

    fn send_in_background(&self, seqs: Range<usize>) -> tokio::task::JoinHandle<Result<()>> {
        tokio::spawn(send_all(self.senders.clone(), seqs))
    }

    /// Waits until the first recipient has received something at or past `seq` (traffic flows).
    async fn first_arrivals(&mut self, seq: usize) -> Result<()> {
        let recipient = &mut self.recipients[0];
        while recipient.highest.is_none_or(|h| h < seq) {
            let message = recipient.user.recv(ROUND_WAIT).await.context("no traffic")?;
            recipient.take(message.json()?)?;
        }
        Ok(())
    }

    /// Receives until every recipient has every message up to `seqs.end`, checking that each new
    /// message is the next of its conversation; returns the duplicates (redeliveries).
    async fn receive(&mut self, seqs: Range<usize>, within: Duration) -> Result<usize> {
        let deadline = tokio::time::Instant::now() + within;
        let end = seqs.end;
        let receiving = self.recipients.iter_mut().map(|recipient| async move {
            let mut duplicates = 0;
            while recipient.highest.is_none_or(|h| h + 1 < end) {
                let Ok(Some(message)) = tokio::time::timeout_at(deadline, recipient.user.recv(within)).await else {
                    bail!("{} got up to {:?} of ..{end}", recipient.user.user(), recipient.highest);
                };
                duplicates += usize::from(!recipient.take(message.json()?)?);
            }
            anyhow::Ok(duplicates)
        });
        let mut total = 0;
        for received in futures_util::future::join_all(receiving).await {
            total += received?;
        }
        Ok(total)
    }
}

impl Recipient {
    /// Takes one inbox message: `true` if it is the next of the conversation, `false` for a
    /// duplicate of an earlier one; an error for a gap (a message missing or out of order).
    fn take(&mut self, body: serde_json::Value) -> Result<bool> {
        let seq: usize = body["text"].as_str().context("no text")?.parse().context("text is not a number")?;
        let next = self.highest.map_or(0, |h| h + 1);
        if seq < next {
            return Ok(false);
        }
        ensure!(seq == next, "{} got message {seq} while expecting {next}", self.user.user());
        self.highest = Some(seq);
        Ok(true)
    }
}

async fn send_all(senders: Vec<std::sync::Arc<MqttUser>>, seqs: Range<usize>) -> Result<()> {
    let sending = senders.into_iter().enumerate().map(|(i, sender)| {
        let seqs = seqs.clone();
        async move {
            let topic = sender.outgoing_topic(&format!("r{i}"));
            for seq in seqs {
                sender.publish_json(&topic, &json!({"text": seq.to_string()})).await?;
            }
            anyhow::Ok(())
        }
    });
    for sent in futures_util::future::join_all(sending).await {
        sent?;
    }
    Ok(())
}
