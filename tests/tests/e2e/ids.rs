//! One message, one id: a message delivered again keeps the `message_id` of its first copies
//! (broker restarts are in `reliability`), a client's retransmission is not a second message,
//! and a text sent twice is two messages.

use anyhow::{Context, Result, ensure};
use inboxd_e2e::MqttUser;
use inboxd_e2e::mqtt::publish_once;
use serde_json::{Value, json};

use crate::util::{Chat, WAIT};

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
