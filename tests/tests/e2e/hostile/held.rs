//! Hostile input against held messages: forged entries, signatures, listings.
//!
//! The attacker is not the observer: a client with a JWT whose scopes grant write (and read)
//! on `*/*`, as third-party token issuers do. That reaches the default exchange, hence the
//! held queue, over AMQP; signing is what keeps `inboxd held release` from delivering it.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use inboxd_e2e::amqp::Observer;
use inboxd_e2e::daemon::{cli, env_for};
use inboxd_e2e::{MqttUser, PrivateNode, eventually};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde_json::{Value, json};

use crate::util::{Chat, PluginSetup, WAIT, expect_on, next};

/// A chain whose moderator holds every message containing `HOLD`.
const HOLDING_CHAIN: &str = r#"
[[plugins.chain]]
name = "moderation"
file = "rust-hostile.wasm"
config = { behaviour = "hold", trigger = "HOLD" }
"#;

/// Scopes of a token from an issuer that grants everything on every vhost (`write:*/*`).
const WIDE_SCOPES: [&str; 3] = ["rabbitmq.configure:*/*", "rabbitmq.write:*/*", "rabbitmq.read:*/*"];

/// An HS256 token of `node` for `user` with exactly `scopes`, as a third-party issuer makes it.
fn wide_token(node: &PrivateNode, user: &str) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = json!({
        "sub": user, "aud": [node.resource_server_id()], "iat": now, "exp": now + 600, "scope": WIDE_SCOPES,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(node.jwt_kid().to_owned());
    let key = jsonwebtoken::EncodingKey::from_secret(node.jwt_secret().as_bytes());
    Ok(jsonwebtoken::encode(&header, &claims, &key)?)
}

/// An AMQP connection of `user` authenticated by [`wide_token`], with a confirm-mode channel.
async fn attacker(node: &PrivateNode, user: &str) -> Result<(Connection, Channel)> {
    let token = wide_token(node, user)?;
    let url = node.amqp_url().replacen("observer:observer@", &format!("{user}:{token}@"), 1);
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .with_context(|| format!("AMQP login of {user} with a JWT"))?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok((connection, channel))
}

/// Publishes straight into `queue` through the default exchange; the broker must confirm it.
async fn publish_into(channel: &Channel, queue: &str, body: &[u8], headers: FieldTable) -> Result<()> {
    let properties = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
    let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
    let confirmation = channel.basic_publish("".into(), queue.into(), options, body, properties).await?.await?;
    ensure!(matches!(confirmation, Confirmation::Ack(None)), "the broker refused the publish: {confirmation:?}");
    Ok(())
}

/// The identity headers of a held entry claiming `sender` → `recipient` (what inboxd writes).
fn held_headers(app: &str, sender: &str, recipient: &str, message_id: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("x-inboxd-plugin", "moderation"),
        ("x-inboxd-reason", "held for review"),
        ("x-inboxd-app", app),
        ("x-inboxd-sender", sender),
        ("x-inboxd-recipient", recipient),
        ("x-inboxd-message-id", message_id),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    headers.insert("x-inboxd-received-at".into(), AMQPValue::LongLongInt(1_700_000_000_000));
    headers
}

fn inbox(chat: &Chat, owner: &str, with: &str) -> String {
    chat.topic(&format!("users/{owner}/messages/{with}/clientadded"))
}

/// The environment of an `inboxd held` command for `chat` (the daemon's, with its chain).
fn held_env(chat: &Chat, plugins: &PluginSetup) -> HashMap<String, String> {
    let mut env = env_for(chat.node, &chat.app);
    env.insert("INBOXD_CONFIG".into(), plugins.config.display().to_string());
    env
}

/// `inboxd held <args>`: (success, stdout, stderr).
async fn held(args: &[&str], env: &HashMap<String, String>) -> Result<(bool, String, String)> {
    let mut argv = vec!["held"];
    argv.extend_from_slice(args);
    let output = cli(&argv, env).await?;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    Ok((output.status.success(), text(&output.stdout), text(&output.stderr)))
}

/// Waits until `queue` holds `len` messages (entries a command left unacked return to the
/// queue as its connection closes).
async fn wait_len(observer: &Observer, queue: &str, len: u32) -> Result<()> {
    eventually(WAIT, format!("{queue} holding {len} messages"), || async {
        let now = observer.queue_len(queue).await?;
        ensure!(now == len, "it holds {now}");
        Ok(())
    })
    .await
}

/// Sends `text` from `from` to `to` and asserts it is the next thing `to` receives.
async fn flows(chat: &Chat, from: &MqttUser, to: &mut MqttUser, text: &str) -> Result<()> {
    from.publish_json(&from.outgoing_topic(to.user()), &json!({ "text": text })).await?;
    let got = expect_on(to, &inbox(chat, to.user(), from.user())).await?;
    ensure!(got["text"] == text, "{} expected {text:?}, got {got}", to.user());
    Ok(())
}

#[tokio::test]
async fn a_forged_held_entry_is_refused_on_release_and_the_genuine_one_is_delivered() -> Result<()> {
    let plugins = PluginSetup::new(&["rust-hostile"], HOLDING_CHAIN)?;
    let chat = Chat::builder().listen().plugins(&plugins).start().await?;
    let (mut alice, mut bob, carol) = (chat.user("alice").await?, chat.user("bob").await?, chat.user("carol").await?);
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "HOLD this"})).await?;
    // One conversation is handled in order: "plain" arriving means the hold is done.
    flows(&chat, &alice, &mut bob, "plain").await?;
    ensure!(expect_on(&mut alice, &inbox(&chat, "alice", "bob")).await?["text"] == "plain", "alice's copy");

    // mallory is no observer: a JWT user whose issuer granted write on */*.
    let held_queue = format!("inboxd.{}.held", chat.app);
    let (mallory, channel) = attacker(chat.node, "mallory").await?;
    let forged = json!({"text": "forged: wire the money", "sender": "alice", "recipient": "bob"}).to_string();
    publish_into(&channel, &held_queue, forged.as_bytes(), held_headers(&chat.app, "alice", "bob", "forged-1")).await?;
    let mut signed = held_headers(&chat.app, "alice", "bob", "forged-2");
    let guessed = format!("sha256={}", "ab".repeat(32));
    signed.insert("x-inboxd-held-signature".into(), AMQPValue::LongString(guessed.as_str().into()));
    publish_into(&channel, &held_queue, forged.as_bytes(), signed).await?;
    mallory.close(200, "done".into()).await?;

    let env = held_env(&chat, &plugins);
    let (ok, listing, stderr) = held(&["list"], &env).await?;
    ensure!(ok, "held list failed: {stderr}");
    let line = |id: &str| listing.lines().find(|l| l.contains(id)).map(str::to_owned);
    ensure!(listing.lines().count() == 3, "held list: {listing}");
    ensure!(line("HOLD this").is_some_and(|l| l.contains("signature=valid")), "held list: {listing}");
    ensure!(line("forged-1").is_some_and(|l| l.contains("signature=refused: not signed")), "held list: {listing}");
    ensure!(line("forged-2").is_some_and(|l| l.contains("signature does not match")), "held list: {listing}");

    let (ok, stdout, stderr) = held(&["release", "--all"], &env).await?;
    ensure!(!ok, "a release that refused entries exited 0: {stdout} {stderr}");
    ensure!(stdout.trim() == "released 1", "release: {stdout} {stderr}");
    ensure!(stderr.contains("refused held entry forged-1") && stderr.contains("not signed"), "{stderr}");
    ensure!(stderr.contains("refused held entry forged-2") && stderr.contains("signature does not match"), "{stderr}");

    let theirs = expect_on(&mut bob, &inbox(&chat, "bob", "alice")).await?;
    ensure!(theirs["text"] == "HOLD this" && theirs["status"] == 150 && theirs["sender"] == "alice", "{theirs}");
    // The release published everything before it returned: had it delivered a forged entry,
    // bob would get it before this next message.
    flows(&chat, &carol, &mut bob, "the daemon still serves others").await?;
    flows(&chat, &alice, &mut bob, "after the release").await?;

    // The forged entries were left in place for a moderator to discard.
    let observer = Observer::connect(chat.node).await?;
    wait_len(&observer, &held_queue, 2).await.context("the forged entries are not left in the held queue")?;
    let (ok, stdout, stderr) = held(&["discard", "--all"], &env).await?;
    ensure!(ok && stdout.trim() == "discarded 2", "discard: {stdout} {stderr}");
    chat.assert_ready().await?;
    chat.daemon.stop().await
}

#[tokio::test]
async fn a_tampered_held_entry_is_refused_on_release() -> Result<()> {
    let plugins = PluginSetup::new(&["rust-hostile"], HOLDING_CHAIN)?;
    let chat = Chat::builder().listen().plugins(&plugins).start().await?;
    let (alice, mut bob, carol) = (chat.user("alice").await?, chat.user("bob").await?, chat.user("carol").await?);
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "HOLD: meet at noon"})).await?;
    flows(&chat, &alice, &mut bob, "plain").await?;

    // mallory (read and write on */*) takes the genuine entry and puts back another body
    // under the same headers and signature.
    let held_queue = format!("inboxd.{}.held", chat.app);
    let (mallory, channel) = attacker(chat.node, "mallory").await?;
    let got = channel
        .basic_get(held_queue.as_str().into(), BasicGetOptions { no_ack: false })
        .await?
        .context("the held entry is not in the held queue")?;
    let mut body: Value = serde_json::from_slice(&got.delivery.data)?;
    ensure!(body["text"] == "HOLD: meet at noon", "held body {body}");
    body["text"] = json!("HOLD: meet at midnight, come alone");
    let headers = got.delivery.properties.headers().clone().context("the held entry has no headers")?;
    ensure!(headers.inner().contains_key("x-inboxd-held-signature"), "the held entry is not signed: {headers:?}");
    publish_into(&channel, &held_queue, body.to_string().as_bytes(), headers).await?;
    got.delivery.acker.ack(BasicAckOptions::default()).await?;
    mallory.close(200, "done".into()).await?;

    let env = held_env(&chat, &plugins);
    let (ok, listing, _) = held(&["list"], &env).await?;
    ensure!(ok && listing.contains("midnight") && listing.contains("signature does not match"), "list: {listing}");
    let (ok, stdout, stderr) = held(&["release", "--all"], &env).await?;
    ensure!(!ok && stdout.trim() == "released 0", "release: {stdout} {stderr}");
    ensure!(stderr.contains("signature does not match"), "{stderr}");
    // Nothing reached bob: the next thing he gets is carol's message.
    flows(&chat, &carol, &mut bob, "the daemon still serves others").await?;
    let observer = Observer::connect(chat.node).await?;
    wait_len(&observer, &held_queue, 1).await.context("the tampered entry is not left in place")?;
    chat.assert_ready().await?;
    chat.daemon.stop().await
}

#[tokio::test]
async fn without_a_held_secret_a_hold_is_dead_lettered_and_release_refuses() -> Result<()> {
    let plugins = PluginSetup::new(&["rust-hostile"], HOLDING_CHAIN)?;
    let chat = Chat::builder().listen().plugins(&plugins).unset("INBOXD_HELD_SECRET").start().await?;
    let (alice, mut bob, carol) = (chat.user("alice").await?, chat.user("bob").await?, chat.user("carol").await?);
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "HOLD this"})).await?;
    flows(&chat, &alice, &mut bob, "plain").await?;

    let observer = Observer::connect(chat.node).await?;
    let queue = format!("inboxd.{}", chat.app);
    let dead = observer.get_within(&format!("{queue}.dead"), WAIT).await?.context("nothing dead-lettered")?;
    ensure!(dead.header("x-inboxd-reason").as_deref() == Some("held-unsigned"), "{dead:?}");
    ensure!(dead.header("x-inboxd-plugin").as_deref() == Some("moderation"), "{dead:?}");
    let key = format!("apps.{}.outgoing.users.alice.messages.bob.outgoing", chat.app);
    ensure!(dead.header("x-inboxd-routing-key") == Some(key), "{dead:?}");
    ensure!(dead.json()?["text"] == "HOLD this", "{dead:?}");
    ensure!(observer.queue_len(&format!("{queue}.held")).await? == 0, "held without a key");

    let mut env = held_env(&chat, &plugins);
    env.remove("INBOXD_HELD_SECRET");
    let (ok, stdout, stderr) = held(&["release", "--all"], &env).await?;
    ensure!(!ok && stderr.contains("held.secret") && stderr.contains("none is released"), "{stdout} {stderr}");
    flows(&chat, &carol, &mut bob, "the daemon still serves others").await?;
    chat.assert_ready().await?;
    chat.daemon.stop().await
}

/// Bad input that floods the dead-letter queue past its limit: the oldest dead letters are
/// dropped, the queue stays at its limit, and good messages keep flowing.
#[tokio::test]
async fn the_dead_letter_queue_stays_bounded_under_a_flood_of_bad_input() -> Result<()> {
    const LIMIT: usize = 20;
    const FLOOD: usize = 60;
    let chat = Chat::builder().listen().env("INBOXD_BROKER_DEAD_LETTER_MAX_LENGTH", LIMIT.to_string()).start().await?;
    let (mallory, alice, mut bob) = (chat.user("mallory").await?, chat.user("alice").await?, chat.user("bob").await?);
    for n in 0..FLOOD {
        // Not JSON: each one is dead-lettered (`invalid-json`).
        mallory.publish(&mallory.outgoing_topic("bob"), format!("{{\"n\": {n},")).await?;
        if n % 10 == 9 {
            flows(&chat, &alice, &mut bob, &format!("good {n}")).await?;
        }
    }
    // mallory's conversation is handled in order: her last bad message settles before this.
    mallory.publish_json(&mallory.outgoing_topic("bob"), &json!({"text": "mallory's last"})).await?;
    let (_, last) = next(&mut bob).await?;
    ensure!(last["text"] == "mallory's last", "bob got {last}");

    let observer = Observer::connect(chat.node).await?;
    let dead_queue = format!("inboxd.{}.dead", chat.app);
    ensure!(observer.queue_len(&dead_queue).await? as usize == LIMIT, "the dead-letter queue is not at its limit");
    let mut kept = Vec::new();
    while let Some(dead) = observer.get_within(&dead_queue, Duration::ZERO).await? {
        ensure!(dead.header("x-inboxd-reason").as_deref() == Some("invalid-json"), "{dead:?}");
        kept.push(String::from_utf8_lossy(&dead.payload).into_owned());
    }
    let newest: Vec<String> = (FLOOD - LIMIT..FLOOD).map(|n| format!("{{\"n\": {n},")).collect();
    ensure!(kept == newest, "kept {kept:?}");
    flows(&chat, &alice, &mut bob, "still flowing").await?;
    chat.assert_ready().await?;
    chat.daemon.stop().await
}

/// A deployment whose dead-letter queue was made before the limit existed: the daemon cannot
/// redeclare it with the limit (the broker refuses other arguments), so it uses it as it is.
#[tokio::test]
async fn an_existing_dead_letter_queue_without_a_limit_is_used_as_it_is() -> Result<()> {
    let node = inboxd_e2e::shared_node().await?;
    let queue = inboxd_e2e::unique_id("inboxd-legacy");
    let observer = Observer::connect(node).await?;
    let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    let dead_queue = format!("{queue}.dead");
    observer.channel().queue_declare(dead_queue.as_str().into(), durable, FieldTable::default()).await?;
    let chat = Chat::builder()
        .listen()
        .env("INBOXD_BROKER_QUEUE", queue.clone())
        .env("INBOXD_BROKER_DEAD_LETTER_MAX_LENGTH", "5")
        .start()
        .await?;
    let (mallory, alice, mut bob) = (chat.user("mallory").await?, chat.user("alice").await?, chat.user("bob").await?);
    for n in 0..8 {
        mallory.publish(&mallory.outgoing_topic("bob"), format!("not json {n}")).await?;
    }
    mallory.publish_json(&mallory.outgoing_topic("bob"), &json!({"text": "mallory's last"})).await?;
    ensure!(next(&mut bob).await?.1["text"] == "mallory's last", "mallory's conversation stalled");
    flows(&chat, &alice, &mut bob, "still flowing").await?;
    // Unbounded as it was created: every dead letter is kept, none lost to a limit it lacks.
    ensure!(observer.queue_len(&dead_queue).await? == 8, "the existing dead-letter queue was not used");
    observer.channel().queue_delete(dead_queue.as_str().into(), Default::default()).await?;
    chat.assert_ready().await?;
    chat.daemon.stop().await
}
