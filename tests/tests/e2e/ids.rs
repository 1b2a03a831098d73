//! One message, one id: a message delivered again keeps the `message_id` of its first copies
//! (broker restarts are in `reliability`, shard owners killed on a cluster in `scale`), also
//! after inboxd was killed; a client's retransmission is not a second message, and a text sent
//! twice is two messages.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use inboxd::store::Store;
use inboxd_e2e::daemon::{Process, env_for};
use inboxd_e2e::db::TestDb;
use inboxd_e2e::mqtt::publish_once;
use inboxd_e2e::numbered::{Inbox, Stream};
use inboxd_e2e::{ConnectOptions, MqttUser, PrivateNode, eventually, shared_node, unique_id};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::util::{Chat, WAIT};

/// Bound for a stream to arrive after a crash.
const STREAM_WAIT: Duration = Duration::from_secs(120);

/// The next message in `user`'s inbox, as JSON.
async fn next(user: &mut MqttUser) -> Result<Value> {
    user.recv(WAIT).await.with_context(|| format!("nothing arrived at {}", user.user()))?.json()
}

#[tokio::test]
async fn a_retransmitted_publish_is_one_message() -> Result<()> {
    let chat = Chat::start().await?;
    let alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let topic = alice.outgoing_topic("bob");
    let payload = serde_json::to_vec(&json!({"text": "sent once, retransmitted once"}))?;

    alice.publish(&topic, payload.clone()).await?;
    let first = next(&mut bob).await?;
    // RabbitMQ 3.10 forwards the retransmission as a new message marked `x-mqtt-dup`.
    publish_once(chat.node, "alice", &chat.app, &topic, payload.clone(), true).await?;
    // The same publish without the flag: alice sends the same text again, a second message.
    publish_once(chat.node, "alice", &chat.app, &topic, payload, false).await?;
    alice.publish_json(&topic, &json!({"text": "marker"})).await?;

    let again = next(&mut bob).await?;
    ensure!(again["text"] == first["text"], "bob got {again} instead of the text sent again");
    ensure!(again["message_id"] != first["message_id"], "the text sent again kept the first id: {again}");
    let after = next(&mut bob).await?;
    ensure!(after["text"] == "marker", "bob got one copy too many: {after}");
    chat.daemon.stop().await
}

#[tokio::test]
async fn the_same_text_sent_twice_is_two_messages() -> Result<()> {
    let chat = Chat::start().await?;
    let alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let topic = alice.outgoing_topic("bob");

    for _ in 0..2 {
        alice.publish_json(&topic, &json!({"text": "ok"})).await?;
    }
    let (first, second) = (next(&mut bob).await?, next(&mut bob).await?);
    ensure!(first["text"] == "ok" && second["text"] == "ok", "{first} {second}");
    ensure!(first["message_id"] != second["message_id"], "one id for two messages: {first} {second}");
    chat.daemon.stop().await
}

/// A recipient with a persistent session (QoS 1), so nothing published to it waits on its client.
async fn persistent(node: &PrivateNode, app: &str, user: &str) -> Result<MqttUser> {
    let options =
        ConnectOptions { clean_session: false, client_id: Some(format!("{user}-{app}")), ..ConnectOptions::default() };
    let user = MqttUser::connect(node, user, app, options).await.context("setup failed: connecting")?;
    user.subscribe_inbox().await.context("setup failed: subscribing")?;
    Ok(user)
}

/// `sender` publishes the same text ("ok") over and over until `stop`, then "end"; returns how
/// many "ok" the broker accepted.
fn repeat_ok(sender: MqttUser, recipient: &'static str, stop: CancellationToken) -> JoinHandle<Result<usize>> {
    tokio::spawn(async move {
        let topic = sender.outgoing_topic(recipient);
        let mut sent = 0;
        while !stop.is_cancelled() {
            sender.publish_json(&topic, &json!({"text": "ok"})).await?;
            sent += 1;
        }
        sender.publish_json(&topic, &json!({"text": "end"})).await?;
        Ok(sent)
    })
}

/// Receives until "end": the distinct ids of the "ok" copies, and how many copies came.
async fn receive_oks(user: &mut MqttUser) -> Result<(HashSet<String>, usize)> {
    let (mut ids, mut copies) = (HashSet::new(), 0);
    loop {
        let message = user.recv(STREAM_WAIT).await.context("\"end\" did not arrive")?.json()?;
        if message["text"] == "end" {
            return Ok((ids, copies));
        }
        ensure!(message["text"] == "ok", "unexpected {message}");
        copies += 1;
        ids.insert(message["message_id"].as_str().context("no message_id")?.to_owned());
    }
}

/// How many rows `inbox`'s history of `conversation` holds, and how many distinct texts.
async fn history_rows(store: &Store, app: &str, inbox: &str, conversation: &str) -> Result<(usize, usize)> {
    let rows = store.messages(app, inbox, conversation, None, 100_000).await?;
    let texts: HashSet<&str> = rows.iter().filter_map(|m| m["text"].as_str()).collect();
    Ok((rows.len(), texts.len()))
}

/// inboxd is SIGKILLed while two conversations flow (numbered messages, and the same "ok" over
/// and over) and started again on the same store: every message arrives, every copy that comes
/// twice carries its first id, the identical "ok"s keep one id each (none merged, none split),
/// and the history holds one row per message per inbox.
#[tokio::test]
async fn a_killed_inboxd_gives_redeliveries_their_first_ids() -> Result<()> {
    let node = shared_node().await?;
    let app = unique_id("app");
    let db = TestDb::sqlite()?;
    let mut env = env_for(node, &app);
    env.insert("INBOXD_STORE_URL".into(), db.url().to_owned());
    let queue = format!("inboxd.{app}");
    let mut daemon = Process::spawn(node, &queue, &env).await?;
    let mut bob = Inbox::new(persistent(node, &app, "bob").await?);
    let mut dave = persistent(node, &app, "dave").await?;
    let alice = Arc::new(MqttUser::connect(node, "alice", &app, ConnectOptions::default()).await?);
    let carol = MqttUser::connect(node, "carol", &app, ConnectOptions::default()).await?;

    let numbers = Stream::start(vec![(alice, "bob".to_owned(), 0)]);
    let stop = CancellationToken::new();
    let oks = repeat_ok(carol, "dave", stop.clone());
    bob.receive_until(100, tokio::time::Instant::now() + STREAM_WAIT).await.context("nothing flowed")?;
    let status = daemon.signal_and_wait(libc::SIGKILL).await?;
    ensure!(!status.success(), "inboxd survived SIGKILL");
    let _daemon = Process::spawn(node, &queue, &env).await?;
    bob.receive_until(200, tokio::time::Instant::now() + STREAM_WAIT).await?;
    let [sent] = numbers.finish().await?[..] else { unreachable!("one conversation") };
    stop.cancel();
    let oks = oks.await??;

    bob.receive_until(sent, tokio::time::Instant::now() + STREAM_WAIT).await?;
    let (ids, copies) = receive_oks(&mut dave).await?;
    eprintln!(
        "sigkill with durable ids: {sent} numbered, {} duplicates, {} with a new id; {oks} \"ok\" in {copies} copies, {} ids",
        bob.duplicates(),
        bob.renamed(),
        ids.len()
    );
    ensure!(bob.renamed() == 0, "{} of {} duplicates came with a new message_id", bob.renamed(), bob.duplicates());
    ensure!(ids.len() == oks, "{oks} identical messages arrived under {} ids", ids.len());

    // Read from another process: the restarted inboxd applies its last writes within a pass.
    let store = Store::open(&db.url().parse().map_err(anyhow::Error::msg)?).await?.context("a store")?;
    let histories =
        [("bob", "alice", sent), ("alice", "bob", sent), ("dave", "carol", oks + 1), ("carol", "dave", oks + 1)];
    eventually(WAIT, "one history row per message", async || {
        for (inbox, conversation, messages) in histories {
            let (rows, _) = history_rows(&store, &app, inbox, conversation).await?;
            ensure!(rows == messages, "{inbox}'s history with {conversation}: {rows} rows for {messages} messages");
        }
        Ok(())
    })
    .await?;
    ensure!(history_rows(&store, &app, "bob", "alice").await?.1 == sent, "a number stored twice");
    store.close().await;
    Ok(())
}
