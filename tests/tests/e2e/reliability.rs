//! Nothing is lost and the queue never stalls: bad input is dead-lettered with its reason,
//! conversations keep their order, and a killed daemon or a restarted broker loses nothing.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use inboxd::broker::{Failover, Journal};
use inboxd_e2e::amqp::Observer;
use inboxd_e2e::daemon::{InProcess, Process, env_for};
use inboxd_e2e::db::TestDb;
use inboxd_e2e::numbered::{self, Inbox};
use inboxd_e2e::{ConnectOptions, MqttUser, PrivateNode, shared_node, unique_id};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::util::{Chat, WAIT, expect_on};

/// Messages in each crash test.
const STREAM: usize = 1000;
/// Bound for a whole stream to arrive after a crash or restart.
const STREAM_WAIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn bad_input_is_dead_lettered_with_its_reason_and_the_next_message_flows() -> Result<()> {
    let chat = Chat::builder().env("INBOXD_PIPELINE_MAX_BODY_BYTES", "1024").start().await?;
    let alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let observer = Observer::connect(chat.node).await?;
    let queue = format!("inboxd.{}", chat.app);
    let to_bob = alice.outgoing_topic("bob");
    let group = alice.outgoing_topic("group-bad");

    let bad_members = json!({"channel_type": "group", "group": {"members": {"b+d": 1}}}).to_string();
    let mqtt_cases = [
        (to_bob.as_str(), "{\"text\":".to_owned()),
        (to_bob.as_str(), "[1,2,3]".to_owned()),
        (to_bob.as_str(), format!("{{\"text\":\"{}\"}}", "x".repeat(2000))),
        (group.as_str(), bad_members),
    ];
    for (i, (topic, payload)) in mqtt_cases.iter().enumerate() {
        alice.publish(topic, payload.clone()).await?;
        alice.publish_json(&to_bob, &json!({"text": format!("good {i}")})).await?;
        let got = expect_on(&mut bob, &format!("apps/{}/users/bob/messages/alice/clientadded", chat.app)).await?;
        ensure!(got["text"] == format!("good {i}").as_str(), "after bad input {i}, bob got {got}");
    }
    // What MQTT cannot produce: a key outside the table, and an id with a wildcard character.
    observer.publish_raw("", &queue, b"{}").await?;
    observer
        .publish_raw("amq.topic", &format!("apps.{}.outgoing.users.a#b.messages.bob.outgoing", chat.app), b"{}")
        .await?;
    alice.publish_json(&to_bob, &json!({"text": "last"})).await?;
    let got = expect_on(&mut bob, &format!("apps/{}/users/bob/messages/alice/clientadded", chat.app)).await?;
    ensure!(got["text"] == "last", "bob got {got}");

    let dead_queue = format!("{queue}.dead");
    let mut reasons = Vec::new();
    for _ in 0..6 {
        let dead = observer.get_within(&dead_queue, WAIT).await?.context("dead-letter queue has fewer than 6")?;
        ensure!(dead.header("x-inboxd-routing-key").is_some() && dead.header("x-inboxd-error").is_some(), "{dead:?}");
        reasons.push(dead.header("x-inboxd-reason").context("no reason header")?);
    }
    reasons.sort();
    let expected = ["invalid-id", "invalid-id", "invalid-json", "not-an-object", "too-large", "unknown-topic"];
    ensure!(reasons == expected, "reasons {reasons:?}");
    ensure!(observer.queue_len(&queue).await? == 0, "the queue kept messages");
    chat.daemon.stop().await
}

#[tokio::test]
async fn each_conversation_arrives_in_send_order() -> Result<()> {
    const PAIRS: usize = 8;
    const PER_PAIR: usize = 50;
    let chat = Chat::builder().env("INBOXD_PIPELINE_WORKERS", "4").start().await?;
    let mut recipients = Vec::new();
    let mut senders = Vec::new();
    for pair in 0..PAIRS {
        recipients.push(Inbox::new(chat.user(&format!("r{pair}")).await?));
        senders.push(chat.user(&format!("s{pair}")).await?);
    }
    let sending = senders
        .iter()
        .enumerate()
        .map(|(pair, sender)| async move { numbered::send(sender, &format!("r{pair}"), 0..PER_PAIR).await });
    futures_util::future::try_join_all(sending).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    for recipient in &mut recipients {
        recipient.receive_until(PER_PAIR, deadline).await?;
        let duplicates = recipient.duplicates();
        ensure!(duplicates == 0, "{} got {duplicates} duplicates", recipient.user().user());
    }
    chat.daemon.stop().await
}

/// A recipient with a persistent session (QoS 1), which keeps its queue across disconnects.
async fn persistent_recipient(node: &PrivateNode, app: &str) -> Result<MqttUser> {
    let options =
        ConnectOptions { clean_session: false, client_id: Some(format!("bob-{app}")), ..ConnectOptions::default() };
    let bob = MqttUser::connect(node, "bob", app, options).await.context("setup failed: connecting bob")?;
    bob.subscribe_inbox().await.context("setup failed: subscribing")?;
    Ok(bob)
}

/// Receives until all of `0..STREAM` arrived at bob, complete and in order; returns the duplicates.
async fn receive_all(bob: &mut Inbox) -> Result<usize> {
    bob.receive_until(STREAM, tokio::time::Instant::now() + STREAM_WAIT).await?;
    Ok(bob.duplicates())
}

/// Waits until bob has received message 0 (the stream is flowing through inboxd).
async fn first_delivery(bob: &mut Inbox) -> Result<()> {
    bob.receive_until(1, tokio::time::Instant::now() + WAIT).await.context("nothing arrived before the crash")
}

/// A crash test's cast: inboxd as a process on the shared node, bob persistent, alice sending.
struct Stream {
    node: &'static PrivateNode,
    env: HashMap<String, String>,
    queue: String,
    daemon: Process,
    bob: Inbox,
    alice: MqttUser,
}

impl Stream {
    async fn start() -> Result<Stream> {
        Stream::start_with(None).await
    }

    /// With `store`, inboxd keeps its history there and commits its acks with the settle journal.
    async fn start_with(store: Option<&TestDb>) -> Result<Stream> {
        let node = shared_node().await?;
        let app = unique_id("app");
        let mut env = env_for(node, &app);
        if let Some(store) = store {
            env.insert("INBOXD_STORE_URL".to_owned(), store.url().to_owned());
        }
        let queue = format!("inboxd.{app}");
        let daemon = Process::spawn_logged(node, &queue, &env).await?;
        let bob = Inbox::new(persistent_recipient(node, &app).await?);
        let alice = MqttUser::connect(node, "alice", &app, ConnectOptions::default()).await?;
        Ok(Stream { node, env, queue, daemon, bob, alice })
    }
}

#[tokio::test]
async fn sigkill_mid_stream_loses_nothing() -> Result<()> {
    let Stream { node, env, queue, mut daemon, mut bob, alice } = Stream::start().await?;

    numbered::send(&alice, "bob", 0..STREAM / 2).await?;
    first_delivery(&mut bob).await?;
    let status = daemon.signal_and_wait(libc::SIGKILL).await?;
    ensure!(!status.success(), "inboxd survived SIGKILL");
    numbered::send(&alice, "bob", STREAM / 2..STREAM).await?;
    let _daemon = Process::spawn(node, &queue, &env).await?;

    let duplicates = receive_all(&mut bob).await?;
    let renamed = bob.renamed();
    eprintln!(
        "sigkill: all {STREAM} delivered, {duplicates} duplicate deliveries (at-least-once), {renamed} with a new id"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_exits_cleanly_and_a_restart_delivers_the_rest() -> Result<()> {
    sigterm_mid_stream(Stream::start().await?).await
}

/// With a store the consuming channel is transactional: the drain's commits and the consumer's
/// cancel must not meet (the broker closes the connection when a command comes during a commit).
#[tokio::test]
async fn sigterm_with_a_store_exits_cleanly_and_a_restart_delivers_the_rest() -> Result<()> {
    let store = TestDb::sqlite()?;
    sigterm_mid_stream(Stream::start_with(Some(&store)).await?).await
}

/// SIGTERM while a stream flows in: a clean exit with nothing logged as an error, then a restart
/// delivers the rest.
async fn sigterm_mid_stream(stream: Stream) -> Result<()> {
    let Stream { node, env, queue, mut daemon, mut bob, alice } = stream;

    let sending = tokio::spawn(async move { numbered::send(&alice, "bob", 0..STREAM).await });
    first_delivery(&mut bob).await?;
    let status = daemon.signal_and_wait(libc::SIGTERM).await?;
    sending.await.context("the sender panicked")??;
    let log = daemon.log()?;
    ensure!(status.success(), "inboxd exited with {status} after SIGTERM; its log:\n{log}");
    // Every channel closed before the connection: none closes itself as the connection goes.
    ensure!(!log.contains("ERROR"), "a clean shutdown logged errors:\n{log}");
    let observer = Observer::connect(node).await?;
    let waiting = observer.queue_len(&queue).await?;
    let restarted = Process::spawn_logged(node, &queue, &env).await?;
    let duplicates = receive_all(&mut bob).await?;
    let log = restarted.log()?;
    ensure!(!log.contains("ERROR"), "the restarted inboxd logged errors:\n{log}");
    eprintln!("sigterm: {waiting} waited in the queue, all {STREAM} delivered, {duplicates} duplicates");
    Ok(())
}

#[tokio::test]
async fn broker_restart_with_messages_in_flight_loses_nothing() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("inboxd-restart-").tempdir()?;
    let mut node = PrivateNode::start(dir.path()).await.context("setup failed: private node")?;
    let app = unique_id("app");
    let env: HashMap<_, _> = env_for(&node, &app);
    let queue = format!("inboxd.{app}");

    // inboxd declares its queue, then stops, so the stream queues up in the broker.
    InProcess::start(&node, env.clone()).await?.stop().await?;
    let mut bob = Inbox::new(persistent_recipient(&node, &app).await?);
    let alice = MqttUser::connect(&node, "alice", &app, ConnectOptions::default()).await?;
    numbered::send(&alice, "bob", 0..STREAM).await?;
    alice.disconnect().await?;
    let observer = Observer::connect(&node).await?;
    ensure!(observer.queue_len(&queue).await? == STREAM as u32, "the stream is not queued");
    drop(observer);

    let daemon = InProcess::start(&node, env).await?;
    first_delivery(&mut bob).await?;
    node.stop().await?;
    node.start_again().await?;
    let duplicates = receive_all(&mut bob).await?;
    eprintln!("broker restart: all {STREAM} delivered, {duplicates} duplicate deliveries (at-least-once)");
    // inboxd lived through the broker's restart: what it had in flight came back under its ids.
    ensure!(bob.renamed() == 0, "{} of {duplicates} duplicates came with a new message_id", bob.renamed());
    daemon.stop().await
}

/// A settle journal other processes write to faster than it is read: taking it (what a
/// redelivery waits for before it looks up its intent) ends with the markers that were there
/// when it started, every one of them, rather than chasing the writers.
#[tokio::test]
async fn taking_the_settle_journal_ends_while_others_write_to_it() -> Result<()> {
    const BEFORE: usize = 200;
    let node = shared_node().await?;
    let queue = unique_id("journal");
    let journal_queue = format!("{queue}.settled");
    let connection = Connection::connect(&node.amqp_url(), ConnectionProperties::default()).await?;
    let setup = connection.create_channel().await?;
    setup.queue_declare(journal_queue.as_str().into(), QueueDeclareOptions::default(), FieldTable::default()).await?;
    let observer = Observer::connect(node).await?;
    for i in 0..BEFORE {
        observer.publish_raw("", &journal_queue, format!("before-{i}\nbefore-{i}b").as_bytes()).await?;
    }
    let stop = CancellationToken::new();
    let writer = {
        let (stop, channel, journal_queue) = (stop.clone(), connection.create_channel().await?, journal_queue.clone());
        tokio::spawn(async move {
            let mut written = 0_usize;
            while !stop.is_cancelled() {
                let marker = format!("after-{written}");
                let options = BasicPublishOptions::default();
                let properties = BasicProperties::default();
                channel
                    .basic_publish("".into(), journal_queue.as_str().into(), options, marker.as_bytes(), properties)
                    .await?;
                written += 1;
            }
            anyhow::Ok(written)
        })
    };
    // The writer is under way before the journal is taken.
    inboxd_e2e::eventually(WAIT, "markers written after the first ones", || async {
        ensure!(observer.queue_len(&journal_queue).await? as usize > BEFORE + 100, "the writer has not started");
        Ok(())
    })
    .await?;
    let mut journal = Journal::new(Failover::new(&[node.amqp_url()]), "test", &queue);
    let taken = tokio::time::timeout(WAIT, journal.take()).await.context("taking the journal did not end")??;
    stop.cancel();
    let written = writer.await??;
    let expected: Vec<String> = (0..BEFORE).flat_map(|i| [format!("before-{i}"), format!("before-{i}b")]).collect();
    ensure!(taken.ids.len() >= expected.len(), "{} ids taken, {} were there", taken.ids.len(), expected.len());
    ensure!(taken.ids[..expected.len()] == expected[..], "the first markers, in order");
    ensure!(taken.ids.len() < expected.len() + written, "took all {written} markers written meanwhile");
    journal.remove(taken).await?;
    Ok(())
}

/// A failure that closes the settle journal's channel (here a `basic.get` of a journal deleted
/// meanwhile: NOT_FOUND) or its connection (the broker restarted; RabbitMQ also closes the
/// connection of a `basic.get` on a quorum journal without a leader) does not end its reading:
/// the next take opens them again and takes what the journal holds by then, and markers taken on
/// a closed channel went back to the journal rather than being acked on the new one.
#[tokio::test]
async fn the_settle_journal_is_read_again_after_a_failure_closed_its_channel_or_connection() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("inboxd-journal-").tempdir()?;
    let mut node = PrivateNode::start(dir.path()).await.context("setup failed: private node")?;
    let queue = unique_id("journal-reopen");
    let journal_queue = format!("{queue}.settled");
    let mut journal = Journal::new(Failover::new(&[node.amqp_url()]), "test", &queue);
    // A journal as the consuming channels declare it (not durable: a restart takes it away).
    let marker = |observer: Observer, text: &'static str| {
        let journal_queue = journal_queue.clone();
        async move {
            let (options, arguments) = (QueueDeclareOptions::default(), FieldTable::default());
            observer.channel().queue_declare(journal_queue.as_str().into(), options, arguments).await?;
            observer.publish_raw("", &journal_queue, text.as_bytes()).await?;
            anyhow::Ok(observer)
        }
    };

    let observer = marker(Observer::connect(&node).await?, "first").await?;
    let first = journal.take().await?;
    ensure!(first.ids == ["first"], "taken before the failure: {:?}", first.ids);
    observer.channel().queue_delete(journal_queue.as_str().into(), QueueDeleteOptions::default()).await?;
    ensure!(journal.take().await.is_err(), "taking a deleted journal failed");
    marker(observer, "second").await?;
    // The markers taken before the failure are not acked on the channel opened since.
    journal.remove(first).await?;
    let second = journal.take().await.context("taking the journal once its channel closed")?;
    ensure!(second.ids == ["second"], "taken after the channel closed: {:?}", second.ids);
    journal.remove(second).await?;

    node.stop().await?;
    ensure!(journal.take().await.is_err(), "taking the journal of a stopped broker failed");
    node.start_again().await?;
    let observer = marker(Observer::connect(&node).await?, "third").await?;
    let third = journal.take().await.context("taking the journal once its connection closed")?;
    ensure!(third.ids == ["third"], "taken after the broker restarted: {:?}", third.ids);
    journal.remove(third).await?;
    inboxd_e2e::eventually(WAIT, "the journal emptied", || async {
        ensure!(observer.queue_len(&journal_queue).await? == 0, "markers left");
        Ok(())
    })
    .await
}
