//! Hostile input against routing: long ids, inline members, unknown groups, panics.
//! Each test sends what a user (or the server side) could send, checks the refusal and its
//! reason, and that the next good message from another user is still delivered.

use anyhow::{Context, Result, ensure};
use inboxd_e2e::amqp::Observer;
use inboxd_e2e::daemon::{Process, env_for, free_address};
use inboxd_e2e::db::TestDb;
use inboxd_e2e::{ConnectOptions, MqttUser, unique_id};
use serde_json::{Value, json};

use crate::util::{Chat, ChatBuilder, WAIT, announce_group, assert_ready, expect_on};

/// The `x-inboxd-reason` of each of the next `count` dead-lettered deliveries of `chat`'s queue.
async fn dead_reasons(observer: &Observer, app: &str, count: usize) -> Result<Vec<String>> {
    let mut reasons = Vec::new();
    for _ in 0..count {
        let dead = observer
            .get_within(&format!("inboxd.{app}.dead"), WAIT)
            .await?
            .with_context(|| format!("fewer than {count} dead-lettered ({reasons:?})"))?;
        reasons.push(dead.header("x-inboxd-reason").context("no reason header")?);
    }
    Ok(reasons)
}

/// `from` sends `text` to `to`; `to` must get it next: the daemon is alive and this
/// conversation was not stuck behind what came before.
async fn next_good_message(chat: &Chat, from: &MqttUser, to: &mut MqttUser, text: &str) -> Result<()> {
    let topic = chat.topic(&format!("users/{}/messages/{}/clientadded", to.user(), from.user()));
    from.publish_json(&from.outgoing_topic(to.user()), &json!({"text": text})).await?;
    let got = expect_on(to, &topic).await?;
    ensure!(got["text"] == text, "{} got {got}", to.user());
    Ok(())
}

/// One worker: deliveries are routed in the order they were published, so "the next message
/// a user gets" tells what they did not get before it.
/// One pipeline worker: everything is handled in arrival order.
fn one_worker() -> ChatBuilder<'static> {
    Chat::builder().listen().env("INBOXD_PIPELINE_WORKERS", "1")
}

#[tokio::test]
async fn a_110_byte_group_id_is_dead_lettered_not_a_panic() -> Result<()> {
    let chat = Chat::builder().listen().start().await?;
    let alice = chat.user("alice").await?;
    let carol = chat.user("carol").await?;
    let mut bob = chat.user("bob").await?;
    let observer = Observer::connect(chat.node).await?;
    let group = format!("group-{}", "x".repeat(104));
    ensure!(group.len() == 110);
    // The inbound key fits; the timeline copy's key holds the id twice and would not.
    alice.publish_json(&alice.outgoing_topic(&group), &json!({"channel_type": "group", "text": "long"})).await?;
    let update = json!({"group": {"uid": group, "members": {"bob": 1}}, "notify_to": {"bob": 1}});
    observer.publish_json(&format!("apps.observer.{}.groups.update", chat.app), &update).await?;
    next_good_message(&chat, &carol, &mut bob, "after the long group").await?;
    ensure!(dead_reasons(&observer, &chat.app, 2).await? == ["id-too-long", "id-too-long"]);
    ensure!(observer.queue_len(&format!("inboxd.{}", chat.app)).await? == 0, "the queue kept messages");
    chat.assert_ready().await?;
    chat.daemon.stop().await
}

#[tokio::test]
async fn receipt_archive_and_update_keys_of_250_bytes_are_dead_lettered() -> Result<()> {
    let chat = Chat::builder().listen().start().await?;
    let bob = chat.user("bob").await?;
    let carol = chat.user("carol").await?;
    let mut alice = chat.user("alice").await?;
    let observer = Observer::connect(chat.node).await?;
    // Each inbound key is 250 bytes; what inboxd would publish for it is longer than 255.
    let prefix = format!("apps/{}/users/bob/", chat.app);
    let conv = |rest: usize| "c".repeat(250 - prefix.len() - rest);
    let topics = [
        format!("{prefix}messages/{}/m1/update", conv("messages//m1/update".len())),
        format!("{prefix}conversations/{}/archive", conv("conversations//archive".len())),
        format!("{prefix}conversations/{}/update", conv("conversations//update".len())),
    ];
    for topic in &topics {
        ensure!(topic.len() == 250, "{topic} is {} bytes", topic.len());
        bob.publish_json(topic, &json!({"status": 200, "is_new": false})).await?;
    }
    next_good_message(&chat, &carol, &mut alice, "after the long keys").await?;
    ensure!(dead_reasons(&observer, &chat.app, 3).await? == ["id-too-long"; 3]);
    chat.assert_ready().await?;
    chat.daemon.stop().await
}

#[tokio::test]
async fn a_300_byte_inline_member_id_is_dead_lettered_even_from_a_trusted_sender() -> Result<()> {
    let chat = one_worker().start().await?;
    let system = chat.user("system").await?;
    let carol = chat.user("carol").await?;
    let mut bob = chat.user("bob").await?;
    let observer = Observer::connect(chat.node).await?;
    let members = json!({"bob": 1, "m".repeat(300): 1});
    let body = json!({"channel_type": "group", "text": "to a long member", "group": {"members": members}});
    system.publish_json(&system.outgoing_topic("group-inline"), &body).await?;
    // bob is listed too, but the whole message is refused: his next message is carol's.
    next_good_message(&chat, &carol, &mut bob, "after the long member").await?;
    ensure!(dead_reasons(&observer, &chat.app, 1).await? == ["id-too-long"]);
    chat.assert_ready().await?;
    chat.daemon.stop().await
}

/// The highest resident set (VmHWM) of `pid` so far, in KiB.
fn peak_rss_kib(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM in /proc/<pid>/status")?;
    line.split_whitespace().nth(1).context("VmHWM without a value")?.parse().context("VmHWM is not a number")
}

/// Where inboxd's resident set must stay while it refuses the 20,000-member message. Before
/// the limit it grew by the body (the member map included) times the members: tens of GB.
const RSS_BOUND_KIB: u64 = 256 * 1024;

#[tokio::test]
async fn twenty_thousand_inline_members_from_a_user_are_refused_in_bounded_memory() -> Result<()> {
    // The real binary, so that its resident set is its own.
    let node = inboxd_e2e::shared_node().await?;
    let app = unique_id("app");
    let address = free_address()?;
    let mut env = env_for(node, &app);
    env.insert("INBOXD_HTTP_ADDRESS".into(), address.to_string());
    let daemon = Process::spawn(node, &format!("inboxd.{app}"), &env).await?;
    let mut users = Vec::new();
    for name in ["mallory", "bob", "carol"] {
        let user = MqttUser::connect(node, name, &app, ConnectOptions::default()).await?;
        user.subscribe_inbox().await?;
        users.push(user);
    }
    let [mallory, bob, mut carol] = <[MqttUser; 3]>::try_from(users).ok().context("three users")?;
    let observer = Observer::connect(node).await?;

    let members: serde_json::Map<String, Value> = (0..20_000).map(|i| (format!("m{i:05}"), json!(1))).collect();
    let mut body = json!({"channel_type": "group", "text": "", "group": {"members": members}});
    let size = serde_json::to_vec(&body)?.len();
    body["text"] = json!("x".repeat(255 * 1024 - size));
    let payload = serde_json::to_vec(&body)?;
    ensure!(payload.len() == 255 * 1024, "{} bytes", payload.len());
    let before = peak_rss_kib(daemon.pid())?;
    mallory.publish(&mallory.outgoing_topic("group-flood"), payload).await?;

    let topic = format!("apps/{app}/users/carol/messages/bob/clientadded");
    bob.publish_json(&bob.outgoing_topic("carol"), &json!({"text": "after the flood"})).await?;
    ensure!(expect_on(&mut carol, &topic).await?["text"] == "after the flood");
    let dead = observer.get_within(&format!("inboxd.{app}.dead"), WAIT).await?.context("nothing dead-lettered")?;
    ensure!(dead.header("x-inboxd-reason").as_deref() == Some("too-many-members"), "{dead:?}");
    let after = peak_rss_kib(daemon.pid())?;
    eprintln!("inboxd peak RSS: {before} KiB before the 20,000-member message, {after} KiB after");
    ensure!(after < RSS_BOUND_KIB, "inboxd's peak RSS reached {after} KiB");
    assert_ready(address).await
}

#[tokio::test]
async fn a_member_cannot_override_a_stored_groups_members() -> Result<()> {
    let db = TestDb::sqlite()?;
    let chat = one_worker().store(&db).start().await?;
    let group = "group-stored";
    let mut alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let mut carol = chat.user("carol").await?;
    let dave = chat.user("dave").await?;
    announce_group(&chat, group, &["alice", "bob"], &mut [&mut alice, &mut bob]).await?;

    let members = json!({"alice": 1, "bob": 1, "carol": 1, "mallory": 1});
    let body = json!({"channel_type": "group", "text": "mine now", "group": {"name": "x", "members": members}});
    alice.publish_json(&alice.outgoing_topic(group), &body).await?;
    let topic = |user: &str| chat.topic(&format!("users/{user}/messages/{group}/clientadded"));
    let got = expect_on(&mut bob, &topic("bob")).await?;
    ensure!(got["text"] == "mine now" && got["status"] == 150, "{got}");
    ensure!(got["group"] == json!({"name": "x"}), "the inline member list was echoed: {got}");
    ensure!(expect_on(&mut alice, &topic("alice")).await?["status"] == 150);
    // carol was listed inline, not stored: her next message is dave's.
    next_good_message(&chat, &dave, &mut carol, "after the override").await?;
    chat.assert_ready().await?;
    chat.daemon.stop().await
}

#[tokio::test]
async fn an_unknown_group_from_a_user_gets_a_failed_copy_and_reaches_nobody() -> Result<()> {
    let chat = one_worker().start().await?;
    let group = "team-unknown";
    let mut alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let mut timeline = chat.user(group).await?;
    let carol = chat.user("carol").await?;
    let dave = chat.user("dave").await?;
    let body = json!({"channel_type": "group", "text": "hello?", "group": {"members": {"bob": 1}}});
    alice.publish_json(&alice.outgoing_topic(group), &body).await?;
    let failed = expect_on(&mut alice, &chat.topic(&format!("users/alice/messages/{group}/clientadded"))).await?;
    ensure!(failed["status"] == -100, "{failed}");
    ensure!(failed["attributes"]["rejection"]["code"] == "unknown-group", "{failed}");
    // Neither the listed member nor the group's timeline got it.
    next_good_message(&chat, &carol, &mut bob, "after the unknown group").await?;
    next_good_message(&chat, &dave, &mut timeline, "a direct message to the timeline's user").await?;
    let observer = Observer::connect(chat.node).await?;
    ensure!(observer.queue_len(&format!("inboxd.{}.dead", chat.app)).await? == 0, "refused, not dead-lettered");
    chat.assert_ready().await?;
    chat.daemon.stop().await
}

#[tokio::test]
async fn system_posts_into_a_stored_group_it_is_not_a_member_of() -> Result<()> {
    let db = TestDb::sqlite()?;
    let chat = Chat::builder().listen().store(&db).start().await?;
    let group = "group-support";
    let mut alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let mut timeline = chat.user(group).await?;
    let system = chat.user("system").await?;
    announce_group(&chat, group, &["alice", "bob"], &mut [&mut alice, &mut bob]).await?;

    let info = json!({"channel_type": "group", "text": "Bob joined", "attributes": {"subtype": "info"}});
    system.publish_json(&system.outgoing_topic(group), &info).await?;
    let topic = |user: &str| chat.topic(&format!("users/{user}/messages/{group}/clientadded"));
    let on_timeline = expect_on(&mut timeline, &topic(group)).await?;
    ensure!(on_timeline["status"] == 100 && on_timeline["sender"] == "system", "{on_timeline}");
    for member in [&mut alice, &mut bob] {
        let name = member.user().to_owned();
        let got = expect_on(member, &topic(&name)).await?;
        ensure!(got["status"] == 150 && got["text"] == "Bob joined" && got["sender"] == "system", "{name}: {got}");
    }
    next_good_message(&chat, &bob, &mut alice, "after the info message").await?;
    chat.assert_ready().await?;
    chat.daemon.stop().await
}
