//! One test per row of the chat21 protocol table: what a real MQTT client publishes, and the
//! exact topics, statuses and fields that arrive at each user through inboxd.

use anyhow::{Context, Result, ensure};
use inboxd::store::{Store, StoreUrl};
use inboxd_e2e::amqp::Observer;
use inboxd_e2e::db::TestDb;
use inboxd_e2e::eventually;
use serde_json::{Value, json};

use crate::util::{Chat, WAIT, announce_group, expect_on, next};

fn is_uuid(v: &Value) -> bool {
    v.as_str().is_some_and(|s| uuid::Uuid::parse_str(s).is_ok())
}

#[tokio::test]
async fn direct_message_reaches_sender_with_100_and_recipient_with_150() -> Result<()> {
    let chat = Chat::start().await?;
    let mut alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let sent = json!({"text": "hi bob", "type": "text", "sender_fullname": "Alice", "timestamp": 1234, "channel_type": "direct"});
    alice.publish_json(&alice.outgoing_topic("bob"), &sent).await?;

    let mine = expect_on(&mut alice, &chat.topic("users/alice/messages/bob/clientadded")).await?;
    let theirs = expect_on(&mut bob, &chat.topic("users/bob/messages/alice/clientadded")).await?;
    ensure!(mine["status"] == 100 && theirs["status"] == 150, "statuses: {mine} / {theirs}");
    for copy in [&mine, &theirs] {
        ensure!(copy["sender"] == "alice" && copy["recipient"] == "bob", "{copy}");
        ensure!(copy["app_id"] == chat.app.as_str() && copy["text"] == "hi bob" && copy["timestamp"] == 1234, "{copy}");
        ensure!(copy["sender_fullname"] == "Alice" && copy["type"] == "text", "{copy}");
        ensure!(is_uuid(&copy["message_id"]), "message_id is not a uuid: {copy}");
    }
    ensure!(mine["message_id"] == theirs["message_id"], "one message, one id");
    chat.daemon.stop().await
}

#[tokio::test]
async fn message_without_timestamp_gets_one() -> Result<()> {
    let chat = Chat::start().await?;
    let alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "no clock"})).await?;
    let copy = expect_on(&mut bob, &chat.topic("users/bob/messages/alice/clientadded")).await?;
    ensure!(copy["timestamp"].as_i64().is_some_and(|t| t > 1_700_000_000_000), "{copy}");
    chat.daemon.stop().await
}

/// A chat with a store, so that groups announced on `groups.update` are known.
async fn chat_with_groups(db: &TestDb) -> Result<Chat> {
    Chat::builder().store(db).start().await
}

#[tokio::test]
async fn group_message_reaches_timeline_and_every_member() -> Result<()> {
    let db = TestDb::sqlite()?;
    let chat = chat_with_groups(&db).await?;
    let group = "group-team";
    let mut alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let mut carol = chat.user("carol").await?;
    let mut timeline = chat.user(group).await?;
    announce_group(&chat, group, &["alice", "bob", "carol"], &mut [&mut alice, &mut bob, &mut carol]).await?;
    let body = json!({"text": "hello team", "channel_type": "group"});
    alice.publish_json(&alice.outgoing_topic(group), &body).await?;

    let on_timeline =
        expect_on(&mut timeline, &chat.topic(&format!("users/{group}/messages/{group}/clientadded"))).await?;
    ensure!(on_timeline["status"] == 100, "group timeline copy: {on_timeline}");
    for member in [&mut alice, &mut bob, &mut carol] {
        let name = member.user().to_owned();
        let copy = expect_on(member, &chat.topic(&format!("users/{name}/messages/{group}/clientadded"))).await?;
        ensure!(copy["status"] == 150 && copy["sender"] == "alice" && copy["recipient"] == group, "{name}: {copy}");
        ensure!(copy["message_id"] == on_timeline["message_id"], "{name}: {copy}");
    }
    chat.daemon.stop().await
}

#[tokio::test]
async fn hidden_for_skips_only_that_member() -> Result<()> {
    let db = TestDb::sqlite()?;
    let chat = chat_with_groups(&db).await?;
    let group = "group-hide";
    let mut alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let mut carol = chat.user("carol").await?;
    let mut dave = chat.user("dave").await?;
    let members = ["alice", "bob", "carol", "dave"];
    announce_group(&chat, group, &members, &mut [&mut alice, &mut bob, &mut carol, &mut dave]).await?;
    let hidden = json!({"text": "not for carol", "channel_type": "group", "attributes": {"hiddenFor": "carol"}});
    let open = json!({"text": "for all", "channel_type": "group"});
    alice.publish_json(&alice.outgoing_topic(group), &hidden).await?;
    alice.publish_json(&alice.outgoing_topic(group), &open).await?;

    // One conversation is delivered in order, so carol's first message tells what she missed.
    let topic = |user: &str| chat.topic(&format!("users/{user}/messages/{group}/clientadded"));
    ensure!(expect_on(&mut carol, &topic("carol")).await?["text"] == "for all", "carol saw the hidden message");
    for member in [&mut bob, &mut dave] {
        let name = member.user().to_owned();
        ensure!(expect_on(member, &topic(&name)).await?["text"] == "not for carol", "{name} missed it");
        ensure!(expect_on(member, &topic(&name)).await?["text"] == "for all", "{name} missed it");
    }
    chat.daemon.stop().await
}

#[tokio::test]
async fn read_receipt_reaches_the_other_side_as_250() -> Result<()> {
    let chat = Chat::start().await?;
    let mut alice = chat.user("alice").await?;
    let bob = chat.user("bob").await?;
    bob.publish_json(&chat.topic("users/bob/messages/alice/m-42/update"), &json!({"status": 200})).await?;
    let receipt = expect_on(&mut alice, &chat.topic("users/alice/messages/bob/m-42/clientupdated")).await?;
    ensure!(receipt == json!({"timelineOf": "alice", "message_id": "m-42", "status": 250}), "{receipt}");
    chat.daemon.stop().await
}

#[tokio::test]
async fn conversation_update_is_echoed_to_its_owner() -> Result<()> {
    let chat = Chat::start().await?;
    let mut bob = chat.user("bob").await?;
    bob.publish_json(&chat.topic("users/bob/conversations/alice/update"), &json!({"is_new": false})).await?;
    let echo = expect_on(&mut bob, &chat.topic("users/bob/conversations/alice/clientupdated")).await?;
    ensure!(echo == json!({"is_new": false, "timelineOf": "bob", "conversWith": "alice"}), "{echo}");
    chat.daemon.stop().await
}

/// An archive publishes the stored conversation, as chat21's observer does (marked archived),
/// and nothing for a conversation the user does not have.
#[tokio::test]
async fn archive_removes_the_conversation_and_adds_it_to_the_archive() -> Result<()> {
    let db = TestDb::sqlite()?;
    let chat = Chat::builder().store(&db).start().await?;
    let alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    bob.publish_json(&chat.topic("users/bob/conversations/nobody/archive"), &json!({})).await?;
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "hi bob", "sender_fullname": "Alice"})).await?;
    // The next thing bob gets is alice's message: the archive of nothing published nothing.
    let message = expect_on(&mut bob, &chat.topic("users/bob/messages/alice/clientadded")).await?;
    bob.publish_json(&chat.topic("users/bob/conversations/alice/archive"), &json!({})).await?;
    let deleted = expect_on(&mut bob, &chat.topic("users/bob/conversations/alice/clientdeleted")).await?;
    let archived = expect_on(&mut bob, &chat.topic("users/bob/archived_conversations/alice/clientadded")).await?;
    for body in [&deleted, &archived] {
        ensure!(body["timelineOf"] == "bob" && body["conversWith"] == "alice" && body["archived"] == true, "{body}");
        ensure!(
            body["text"] == "hi bob"
                && body["sender"] == "alice"
                && body["sender_fullname"] == "Alice"
                && body["timestamp"] == message["timestamp"]
                && body["message_id"] == message["message_id"]
                && body["is_new"] == true,
            "not the stored conversation: {body}"
        );
    }
    chat.daemon.stop().await
}

#[tokio::test]
async fn presence_is_consumed_and_publishes_nothing() -> Result<()> {
    // One worker: the presence is handled before the message that follows it.
    let chat = Chat::builder().env("INBOXD_PIPELINE_WORKERS", "1").start().await?;
    let alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    bob.publish_json(&chat.topic("users/bob/presence/client-1"), &json!({"connected": true})).await?;
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "after presence"})).await?;
    let (topic, body) = next(&mut bob).await?;
    ensure!(
        topic == chat.topic("users/bob/messages/alice/clientadded") && body["text"] == "after presence",
        "{topic} {body}"
    );
    let observer = Observer::connect(chat.node).await?;
    let dead = observer.queue_len(&format!("inboxd.{}.dead", chat.app)).await?;
    ensure!(dead == 0, "presence was dead-lettered");
    chat.daemon.stop().await
}

#[tokio::test]
async fn server_side_group_update_reaches_everyone_in_notify_to() -> Result<()> {
    let chat = Chat::start().await?;
    let mut bob = chat.user("bob").await?;
    let mut carol = chat.user("carol").await?;
    let group =
        json!({"uid": "group-x", "name": "Team X", "owner": "alice", "members": {"alice": 1, "bob": 1, "carol": 1}});
    let observer = Observer::connect(chat.node).await?;
    observer
        .publish_json(
            &format!("apps.observer.{}.groups.update", chat.app),
            &json!({"group": group, "notify_to": {"bob": 1, "carol": 1}}),
        )
        .await?;
    for user in [&mut bob, &mut carol] {
        let name = user.user().to_owned();
        let body = expect_on(user, &chat.topic(&format!("users/{name}/groups/group-x/clientupdated"))).await?;
        ensure!(body == group, "{name}: {body}");
    }
    chat.daemon.stop().await
}

/// chat21-http-server's history copy for a member who joined
/// (`apps.observer.<app>.users.<inbox>.messages.<conv>.delivered`, writable by the server side
/// only): delivered as is into that inbox and stored in its history, as chat21's observer does;
/// one with any status but DELIVERED is dead-lettered with its reason (chat21 drops it).
#[tokio::test]
async fn server_side_delivered_copy_reaches_the_inbox_as_is() -> Result<()> {
    let db = TestDb::sqlite()?;
    let chat = Chat::builder().store(&db).start().await?;
    let mut carol = chat.user("carol").await?;
    let observer = Observer::connect(chat.node).await?;
    let key = format!("apps.observer.{}.users.carol.messages.group-h.delivered", chat.app);
    let history = json!({
        "message_id": uuid::Uuid::now_v7().to_string(), "status": 150, "text": "said before you joined",
        "sender": "alice", "recipient": "group-h", "channel_type": "group", "timestamp": 1, "__history": "true",
    });
    let unsent = json!({"message_id": uuid::Uuid::now_v7().to_string(), "status": 100, "text": "not delivered"});
    observer.publish_json(&key, &unsent).await?;
    observer.publish_json(&key, &history).await?;
    let body = expect_on(&mut carol, &chat.topic("users/carol/messages/group-h/clientadded")).await?;
    ensure!(body == history, "carol got {body}");

    let dead_queue = format!("inboxd.{}.dead", chat.app);
    let dead = observer.get_within(&dead_queue, WAIT).await?.context("the undelivered copy was not dead-lettered")?;
    ensure!(dead.header("x-inboxd-reason").as_deref() == Some("bad-field"), "{dead:?}");
    ensure!(dead.header("x-inboxd-routing-key").as_deref() == Some(key.as_str()), "{dead:?}");
    let url: StoreUrl = db.url().parse().map_err(anyhow::Error::msg)?;
    let store = Store::open(&url).await?.context("the test store is not `none`")?;
    eventually(WAIT, "carol's stored history copy", || async {
        let stored = store.messages(&chat.app, "carol", "group-h", None, 10).await?;
        ensure!(stored.len() == 1 && stored[0]["message_id"] == history["message_id"], "{stored:?}");
        Ok(())
    })
    .await?;
    chat.daemon.stop().await
}
