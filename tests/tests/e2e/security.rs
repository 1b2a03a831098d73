//! What the broker itself enforces with the users' JWTs, before inboxd is involved: a user writes
//! only its own topics and reads only its own inbox; bad tokens and foreign client ids are refused.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use inboxd_e2e::{
    ConnectError, ConnectOptions, MqttUser, Tap,
    jwt::{ClientIds, TokenOptions},
    mqtt::ConnectReturnCode,
    shared_node, unique_id,
};
use serde_json::json;

/// Bound for every wait on the broker.
const WAIT: Duration = Duration::from_secs(10);

async fn connect(user: &str, app: &str, options: ConnectOptions) -> Result<MqttUser> {
    let node = shared_node().await?;
    MqttUser::connect(node, user, app, options).await.with_context(|| format!("connecting {user} of {app}"))
}

/// The CONNACK code of a refused connect.
fn refusal(result: Result<MqttUser, ConnectError>) -> Result<ConnectReturnCode> {
    match result {
        Err(ConnectError::Refused(code)) => Ok(code),
        Err(other) => Err(other).context("the connect failed without a CONNACK"),
        Ok(user) => bail!("{} connected with client id {}", user.user(), user.client_id()),
    }
}

fn token_options(change: impl FnOnce(&mut TokenOptions)) -> ConnectOptions {
    let mut options = ConnectOptions::default();
    change(&mut options.token_options);
    options
}

#[tokio::test]
async fn user_may_read_own_inbox_and_write_own_outgoing_topic() -> Result<()> {
    let app = unique_id("app");
    let alice = connect("alice", &app, ConnectOptions::default()).await?;
    alice.subscribe_inbox().await?;
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "hi bob"})).await?;
    ensure!(!alice.is_disconnected(), "alice's connection was closed");
    alice.disconnect().await
}

#[tokio::test]
async fn publishing_as_another_user_closes_the_connection() -> Result<()> {
    let node = shared_node().await?;
    let app = unique_id("app");
    let mut tap = Tap::bind(node, &[&format!("apps.{app}.outgoing.users.*.messages.*.outgoing")]).await?;
    let alice = connect("alice", &app, ConnectOptions::default()).await?;
    let bob = connect("bob", &app, ConnectOptions::default()).await?;

    let forged = alice.publish_json(&bob.outgoing_topic("carol"), &json!({"text": "sent as bob"})).await;
    ensure!(forged.is_err(), "alice got a PUBACK for bob's topic");
    alice.wait_disconnected(WAIT).await?;

    // Alice's connection is closed, so her publish was routed by now if at all: bob's message,
    // published after that, must be the first to reach the queue.
    let sentinel = json!({"text": "really bob"});
    bob.publish_json(&bob.outgoing_topic("carol"), &sentinel).await?;
    let first = tap.recv(WAIT).await?.context("bob's message never arrived")?;
    ensure!(first.json()? == sentinel, "the forged message reached amq.topic: {first:?}");
    bob.disconnect().await
}

#[tokio::test]
async fn subscribing_to_another_inbox_closes_the_connection() -> Result<()> {
    let app = unique_id("app");
    let alice = connect("alice", &app, ConnectOptions::default()).await?;
    let subscribed = alice.subscribe(&format!("apps/{app}/users/bob/#")).await;
    ensure!(subscribed.is_err(), "alice got a SUBACK for bob's inbox");
    alice.wait_disconnected(WAIT).await
}

#[tokio::test]
async fn expired_token_is_refused() -> Result<()> {
    let node = shared_node().await?;
    let options = token_options(|token| token.expired = true);
    let code = refusal(MqttUser::connect(node, "alice", &unique_id("app"), options).await)?;
    ensure!(code == ConnectReturnCode::BadUserNamePassword, "CONNACK {code:?}");
    Ok(())
}

#[tokio::test]
async fn wrongly_signed_token_is_refused() -> Result<()> {
    let node = shared_node().await?;
    let options = token_options(|token| token.bad_signature = true);
    let code = refusal(MqttUser::connect(node, "alice", &unique_id("app"), options).await)?;
    ensure!(code == ConnectReturnCode::BadUserNamePassword, "CONNACK {code:?}");
    Ok(())
}

#[tokio::test]
async fn prefix_client_ids_stop_session_takeover() -> Result<()> {
    let node = shared_node().await?;
    let app = unique_id("app");
    let prefix = |client_id: Option<String>| ConnectOptions {
        client_id,
        clean_session: false,
        ..token_options(|token| token.client_ids = ClientIds::Prefix)
    };

    // Control: alice's own `alice.<uuid>` id works in this mode.
    let alice = MqttUser::connect(node, "alice", &app, prefix(None)).await?;
    ensure!(alice.client_id().starts_with("alice."));
    alice.subscribe_inbox().await?;
    alice.disconnect().await?;

    // Bob leaves a persistent session behind.
    let bob_id = unique_id("bob.session");
    let bob = MqttUser::connect(node, "bob", &app, prefix(Some(bob_id.clone()))).await?;
    bob.subscribe_inbox().await?;
    bob.disconnect().await?;

    let attempt = MqttUser::connect(node, "alice", &app, prefix(Some(bob_id))).await;
    let code = refusal(attempt)?;
    // 3: the token grants no access to bob's session queue.
    ensure!(code == ConnectReturnCode::ServiceUnavailable, "CONNACK {code:?}");
    Ok(())
}

#[tokio::test]
async fn outgoing_message_reaches_amqp() -> Result<()> {
    let node = shared_node().await?;
    let app = unique_id("app");
    let mut tap = Tap::bind(node, &[&format!("apps.{app}.outgoing.users.*.messages.*.outgoing")]).await?;
    let alice = connect("alice", &app, ConnectOptions::default()).await?;
    let body = json!({"text": "hello", "type": "text"});
    alice.publish_json(&alice.outgoing_topic("bob"), &body).await?;

    let got = tap.recv(WAIT).await?.context("nothing reached the queue")?;
    ensure!(
        got.routing_key == format!("apps.{app}.outgoing.users.alice.messages.bob.outgoing"),
        "routing key {}",
        got.routing_key
    );
    ensure!(got.json()? == body, "payload {:?}", got.json()?);
    alice.disconnect().await
}
