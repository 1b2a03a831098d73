//! Nothing is lost and the queue never stalls: bad input is dead-lettered with its reason,
//! conversations keep their order, and a killed daemon or a restarted broker loses nothing.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use inboxd_e2e::amqp::Observer;
use inboxd_e2e::daemon::{InProcess, Process, env_for};
use inboxd_e2e::{ConnectOptions, MqttUser, PrivateNode, shared_node, unique_id};
use serde_json::json;

use crate::util::{Chat, WAIT, expect_on};

/// Messages in each crash test.
const STREAM: usize = 1000;
/// Bound for a whole stream to arrive after a crash or restart.
const STREAM_WAIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn bad_input_is_dead_lettered_with_its_reason_and_the_next_message_flows() -> Result<()> {
    let chat = Chat::start_with(|env| {
        env.insert("INBOXD_PIPELINE_MAX_BODY_BYTES".into(), "1024".into());
    })
    .await?;
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
    let chat = Chat::start_with(|env| {
        env.insert("INBOXD_PIPELINE_WORKERS".into(), "4".into());
    })
    .await?;
    let mut recipients = Vec::new();
    let mut senders = Vec::new();
    for pair in 0..PAIRS {
        recipients.push(chat.user(&format!("r{pair}")).await?);
        senders.push(chat.user(&format!("s{pair}")).await?);
    }
    let sending = senders.into_iter().enumerate().map(|(pair, sender)| async move {
        for seq in 0..PER_PAIR {
            sender.publish_json(&sender.outgoing_topic(&format!("r{pair}")), &json!({"text": seq.to_string()})).await?;
        }
        anyhow::Ok(())
    });
    for sent in futures_util::future::join_all(sending).await {
        sent?;
    }
    for recipient in &mut recipients {
        let got = recipient.recv_n(PER_PAIR, WAIT).await?;
        let seqs: Vec<usize> =
            got.iter().map(|m| Ok(m.json()?["text"].as_str().context("text")?.parse()?)).collect::<Result<_>>()?;
        ensure!(seqs == (0..PER_PAIR).collect::<Vec<_>>(), "{} got {seqs:?}", recipient.user());
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

/// Publishes `n` messages `0..n` from alice to bob, each acknowledged by the broker (QoS 1 PUBACK).
async fn publish_stream(alice: &MqttUser, range: std::ops::Range<usize>) -> Result<()> {
    for seq in range {
        alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": seq.to_string()})).await?;
    }
    Ok(())
}

/// Receives until every message of `0..n` has arrived at least once (`first` already has);
/// returns the number of duplicates.
async fn receive_all(bob: &mut MqttUser, n: usize, first: usize, within: Duration) -> Result<usize> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = BTreeSet::from([first]);
    let mut duplicates = 0;
    while seen.len() < n {
        let Ok(Some(message)) = tokio::time::timeout_at(deadline, bob.recv(within)).await else {
            let missing: Vec<_> = (0..n).filter(|s| !seen.contains(s)).take(20).collect();
            bail!("{} of {n} arrived; first missing: {missing:?}", seen.len());
        };
        let seq: usize = message.json()?["text"].as_str().context("text")?.parse()?;
        if !seen.insert(seq) {
            duplicates += 1;
        }
    }
    Ok(duplicates)
}

/// Waits until bob has received at least one message (the stream is flowing through inboxd).
async fn first_delivery(bob: &mut MqttUser) -> Result<usize> {
    let first = bob.recv(WAIT).await.context("nothing arrived before the crash")?;
    Ok(first.json()?["text"].as_str().context("text")?.parse()?)
}

/// A crash test's cast: inboxd as a process on the shared node, bob persistent, alice sending.
struct Stream {
    node: &'static PrivateNode,
    env: HashMap<String, String>,
    queue: String,
    daemon: Process,
    bob: MqttUser,
    alice: MqttUser,
}

impl Stream {
    async fn start() -> Result<Stream> {
        let node = shared_node().await?;
        let app = unique_id("app");
        let env = env_for(node, &app);
        let queue = format!("inboxd.{app}");
        let daemon = Process::spawn(node, &queue, &env).await?;
        let bob = persistent_recipient(node, &app).await?;
        let alice = MqttUser::connect(node, "alice", &app, ConnectOptions::default()).await?;
        Ok(Stream { node, env, queue, daemon, bob, alice })
    }
}

#[tokio::test]
async fn sigkill_mid_stream_loses_nothing() -> Result<()> {
    let Stream { node, env, queue, daemon, mut bob, alice } = Stream::start().await?;

    publish_stream(&alice, 0..STREAM / 2).await?;
    let first = first_delivery(&mut bob).await?;
    let status = daemon.signal_and_wait(libc::SIGKILL).await?;
    ensure!(!status.success(), "inboxd survived SIGKILL");
    publish_stream(&alice, STREAM / 2..STREAM).await?;
    let _daemon = Process::spawn(node, &queue, &env).await?;

    let duplicates = receive_all(&mut bob, STREAM, first, STREAM_WAIT).await?;
    eprintln!("sigkill: all {STREAM} delivered, {duplicates} duplicate deliveries (at-least-once)");
    Ok(())
}

#[tokio::test]
async fn sigterm_exits_cleanly_and_a_restart_delivers_the_rest() -> Result<()> {
    let Stream { node, env, queue, daemon, mut bob, alice } = Stream::start().await?;

    publish_stream(&alice, 0..STREAM).await?;
    let first = first_delivery(&mut bob).await?;
    let status = daemon.signal_and_wait(libc::SIGTERM).await?;
    ensure!(status.success(), "inboxd exited with {status} after SIGTERM");
    let observer = Observer::connect(node).await?;
    let waiting = observer.queue_len(&queue).await?;
    let _daemon = Process::spawn(node, &queue, &env).await?;
    let duplicates = receive_all(&mut bob, STREAM, first, STREAM_WAIT).await?;
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
    let mut bob = persistent_recipient(&node, &app).await?;
    let alice = MqttUser::connect(&node, "alice", &app, ConnectOptions::default()).await?;
    publish_stream(&alice, 0..STREAM).await?;
    alice.disconnect().await?;
    let observer = Observer::connect(&node).await?;
    ensure!(observer.queue_len(&queue).await? == STREAM as u32, "the stream is not queued");
    drop(observer);

    let daemon = InProcess::start(&node, env).await?;
    let first = first_delivery(&mut bob).await?;
    node.stop().await?;
    node.start_again().await?;
    let duplicates = receive_all(&mut bob, STREAM, first, STREAM_WAIT).await?;
    eprintln!("broker restart: all {STREAM} delivered, {duplicates} duplicate deliveries (at-least-once)");
    daemon.stop().await
}
