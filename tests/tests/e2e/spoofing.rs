//! What inboxd enforces on top of the broker: the sender is the routing-key user whatever the
//! body claims, and group updates come only from the server-side routing key.

use anyhow::{Result, ensure};
use serde_json::json;

use crate::util::{Chat, expect_on, next};

#[tokio::test]
async fn body_claiming_another_sender_is_delivered_with_the_true_sender() -> Result<()> {
    let chat = Chat::start().await?;
    let mallory = chat.user("mallory").await?;
    let mut bob = chat.user("bob").await?;
    let forged = json!({"text": "from your bank", "sender": "alice", "sender_fullname": "Alice", "recipient": "carol",
        "app_id": "other", "message_id": "forged-id", "status": 300});
    mallory.publish_json(&mallory.outgoing_topic("bob"), &forged).await?;
    let copy = expect_on(&mut bob, &chat.topic("users/bob/messages/mallory/clientadded")).await?;
    ensure!(copy["sender"] == "mallory" && copy["recipient"] == "bob", "{copy}");
    ensure!(
        copy["app_id"] == chat.app.as_str() && copy["message_id"] != "forged-id" && copy["status"] == 150,
        "{copy}"
    );
    chat.daemon.stop().await
}

#[tokio::test]
async fn group_update_published_on_a_user_topic_is_ignored() -> Result<()> {
    // One worker: everything is handled in publish order, so a wrongly routed update would
    // reach bob before the message that follows it.
    let chat = Chat::builder().env("INBOXD_PIPELINE_WORKERS", "1").start().await?;
    let mallory = chat.user("mallory").await?;
    let mut bob = chat.user("bob").await?;
    let evil = json!({"group": {"uid": "group-evil", "name": "click here"}, "notify_to": {"bob": 1}});
    // Her token allows `…/users/mallory/messages/<anything>/update`, and the old observer
    // treated any key ending in `.groups.update` as a group change.
    mallory.publish_json(&chat.topic("users/mallory/messages/x/groups/update"), &evil).await?;
    mallory.publish_json(&chat.topic("users/mallory/conversations/groups/update"), &evil).await?;
    mallory.publish_json(&mallory.outgoing_topic("bob"), &json!({"text": "hello"})).await?;
    let (topic, body) = next(&mut bob).await?;
    ensure!(
        topic == chat.topic("users/bob/messages/mallory/clientadded") && body["text"] == "hello",
        "bob got {topic}: {body}"
    );
    chat.daemon.stop().await
}
