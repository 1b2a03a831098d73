//! What an operator relies on: `/metrics` counters that move, `/readyz` that follows the broker,
//! tokens from `inboxd token` that the broker accepts and confines, and a chat21-env-only start.

use anyhow::{Context, Result, bail, ensure};
use inboxd_e2e::daemon::{Process, cli, env_for, free_address, http_get, wait_status};
use inboxd_e2e::mqtt::ConnectReturnCode;
use inboxd_e2e::{ConnectError, ConnectOptions, MqttUser, PrivateNode, eventually, shared_node, unique_id};
use serde_json::json;

use crate::util::{WAIT, expect_on};

/// The value of the metric line that starts with `series` (name plus labels), or 0.
fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_and_readyz_follows_the_broker() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("inboxd-ops-").tempdir()?;
    let mut node = PrivateNode::start(dir.path()).await.context("setup failed: private node")?;
    let app = unique_id("app");
    let address = free_address()?;
    let mut env = env_for(&node, &app);
    env.insert("INBOXD_HTTP_ADDRESS".into(), address.to_string());
    let _daemon = Process::spawn(&node, &format!("inboxd.{app}"), &env).await?;
    wait_status(address, "/readyz", 200).await?;
    ensure!(http_get(address, "/healthz").await?.0 == 200, "healthz");

    let alice = MqttUser::connect(&node, "alice", &app, ConnectOptions::default()).await?;
    let mut bob = MqttUser::connect(&node, "bob", &app, ConnectOptions::default()).await?;
    bob.subscribe_inbox().await?;
    alice.publish(&alice.outgoing_topic("bob"), "{broken").await?;
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "counted"})).await?;
    expect_on(&mut bob, &format!("apps/{app}/users/bob/messages/alice/clientadded")).await?;
    let delivered = "inboxd_messages_total{kind=\"message\",outcome=\"delivered\"}";
    let dead = "inboxd_dead_lettered_total{reason=\"invalid-json\"}";
    eventually(WAIT, "the counters move", || async {
        let (_, text) = http_get(address, "/metrics").await?;
        let moved = metric(&text, delivered) >= 1.0
            && metric(&text, dead) >= 1.0
            && text.contains("inboxd_copies_published_total")
            && text.contains("inboxd_publish_confirm_seconds")
            && text.contains("inboxd_held_messages");
        ensure!(moved, "/metrics:\n{text}");
        Ok(())
    })
    .await?;

    node.stop().await?;
    wait_status(address, "/readyz", 503).await?;
    ensure!(http_get(address, "/healthz").await?.0 == 200, "alive while the broker is gone");
    node.start_again().await?;
    wait_status(address, "/readyz", 200).await?;
    let (_, text) = http_get(address, "/metrics").await?;
    ensure!(metric(&text, "inboxd_reconnects_total") >= 1.0, "no reconnect counted:\n{text}");
    Ok(())
}

/// A token from `inboxd token`, signed with the node's key.
async fn cli_token(node: &PrivateNode, user: &str, app: &str, extra: &[&str]) -> Result<String> {
    let mut env = env_for(node, app);
    env.insert("INBOXD_AUTH_SECRET".into(), node.jwt_secret().to_owned());
    env.insert("INBOXD_AUTH_KEY_ID".into(), node.jwt_kid().to_owned());
    let mut args = vec!["token", "--user", user];
    args.extend_from_slice(extra);
    let out = cli(&args, &env).await?;
    ensure!(out.status.success(), "inboxd token failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

#[tokio::test]
async fn token_from_the_cli_connects_and_is_confined_to_its_user() -> Result<()> {
    let node = shared_node().await?;
    let app = unique_id("app");
    let token = cli_token(node, "alice", &app, &[]).await?;
    let options = ConnectOptions { token: Some(token.clone()), ..ConnectOptions::default() };
    let alice = MqttUser::connect(node, "alice", &app, options.clone()).await?;
    alice.subscribe_inbox().await?;
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "mine"})).await?;
    ensure!(!alice.is_disconnected(), "alice was cut off on her own topics");
    // The same token, used on bob's outgoing topic: the broker closes the connection.
    let as_bob = format!("apps/{app}/outgoing/users/bob/messages/carol/outgoing");
    ensure!(alice.publish_json(&as_bob, &json!({"text": "forged"})).await.is_err(), "publish as bob was accepted");
    alice.wait_disconnected(WAIT).await?;
    let snoop = MqttUser::connect(node, "alice", &app, options).await?;
    ensure!(snoop.subscribe(&format!("apps/{app}/users/bob/#")).await.is_err(), "subscribed to bob's inbox");
    Ok(())
}

#[tokio::test]
async fn strict_client_ids_stop_a_session_takeover() -> Result<()> {
    let node = shared_node().await?;
    let app = unique_id("app");
    let token = cli_token(node, "alice", &app, &["--client-ids", "prefix"]).await?;
    let own = ConnectOptions {
        token: Some(token.clone()),
        client_id: Some(format!("alice.{}", unique_id("c"))),
        ..ConnectOptions::default()
    };
    let alice = MqttUser::connect(node, "alice", &app, own).await?;
    alice.subscribe_inbox().await?;
    // bob has a persistent session (its queue holds his messages while he is away).
    let bob_id = format!("bob.{}", unique_id("c"));
    let bob_token = cli_token(node, "bob", &app, &["--client-ids", "prefix"]).await?;
    let bob = ConnectOptions {
        token: Some(bob_token),
        client_id: Some(bob_id.clone()),
        clean_session: false,
        ..ConnectOptions::default()
    };
    let bob = MqttUser::connect(node, "bob", &app, bob).await?;
    bob.subscribe_inbox().await?;
    bob.disconnect().await?;
    let bobs = ConnectOptions {
        token: Some(token),
        client_id: Some(bob_id),
        clean_session: false,
        ..ConnectOptions::default()
    };
    match MqttUser::connect(node, "alice", &app, bobs).await {
        Err(ConnectError::Refused(code)) => {
            ensure!(code == ConnectReturnCode::ServiceUnavailable, "refused with {code:?}");
            Ok(())
        }
        Err(other) => Err(other).context("the takeover failed without a CONNACK"),
        Ok(_) => bail!("alice took over a session with bob's client id"),
    }
}

#[tokio::test]
async fn chat21_environment_alone_starts_inboxd() -> Result<()> {
    let node = shared_node().await?;
    let app = unique_id("app");
    let env = [
        ("RABBITMQ_URI", node.amqp_url()),
        ("APP_ID", app.clone()),
        ("PREFETCH_MESSAGES", "20".to_owned()),
        ("LOG_LEVEL", "info".to_owned()),
        ("WEBHOOK_ENABLED", "false".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let daemon = Process::spawn(node, &format!("inboxd.{app}"), &env).await?;
    let alice = MqttUser::connect(node, "alice", &app, ConnectOptions::default()).await?;
    let mut bob = MqttUser::connect(node, "bob", &app, ConnectOptions::default()).await?;
    bob.subscribe_inbox().await?;
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "drop-in"})).await?;
    let copy = expect_on(&mut bob, &format!("apps/{app}/users/bob/messages/alice/clientadded")).await?;
    ensure!(copy["text"] == "drop-in" && copy["status"] == 150, "{copy}");
    // The embedded store is on by default: the copy is in bob's history in ./inboxd.db.
    let url = format!("sqlite://{}", daemon.dir().join("inboxd.db").display()).parse().map_err(anyhow::Error::msg)?;
    let store = inboxd::store::Store::open(&url).await?.context("a store")?;
    eventually(WAIT, "the copy in the default store", || async {
        let stored = store.messages(&app, "bob", "alice", None, 10).await?;
        ensure!(stored == [copy.clone()], "bob's history: {stored:?}");
        Ok(())
    })
    .await?;
    store.close().await;
    Ok(())
}
