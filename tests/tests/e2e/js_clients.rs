//! chat21's own JavaScript clients against inboxd, unchanged from the npm registry: chat21client.js
//! (the web widget's and the ionic app's client) over web MQTT and the history API. It works on
//! the app `tilechat` only (hard-coded in its topics), so these tests take turns on it.

use anyhow::{Result, ensure};
use inboxd_e2e::db::TestDb;
use inboxd_e2e::{eventually, unique_id};
use serde_json::{Value, json};

use crate::util::{WAIT, js_client, tilechat_with_api};

/// A chat21client.js user receives a direct message over web MQTT (`onMessageAdded`,
/// `onConversationAdded`), then reads the conversation list and the messages over HTTP with the
/// bare token it connected with.
#[tokio::test]
async fn chat21client_receives_and_reads_history() -> Result<()> {
    let db = TestDb::sqlite()?;
    let (chat, address) = tilechat_with_api(&db).await?;
    let (alice, bob) = (unique_id("alice"), unique_id("bob"));
    let mut client = js_client(&chat, address, &bob).await?;

    let sender = chat.user(&alice).await?;
    sender.publish_json(&sender.outgoing_topic(&bob), &json!({"text": "hi bob", "type": "text"})).await?;
    let added = client.event("onMessageAdded from alice", |event| event.name == "onMessageAdded").await?;
    let message = &added.args[0];
    ensure!(message["text"] == "hi bob" && message["sender"] == alice, "{message}");
    client
        .event("onConversationAdded with alice", |event| {
            event.name == "onConversationAdded" && event.args[1]["conversWith"] == alice
        })
        .await?;

    // The copy is published while the store commits it (the ack waits for both): the list may
    // lag the MQTT copy by a commit.
    eventually(WAIT, "alice in bob's conversation list", async || {
        let conversations = client.call("lastConversations", json!([false])).await?;
        ensure!(conversations[0] == Value::Null, "lastConversations failed: {conversations:?}");
        let list = conversations[1].as_array().cloned().unwrap_or_default();
        ensure!(list.len() == 1 && list[0]["conversWith"] == alice, "{conversations:?}");
        Ok(())
    })
    .await?;
    let messages = client.call("lastMessages", json!([alice])).await?;
    ensure!(messages[0] == Value::Null, "lastMessages failed: {messages:?}");
    ensure!(messages[1][0]["message_id"] == message["message_id"], "{messages:?}");
    Ok(())
}
