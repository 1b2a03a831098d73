//! Hostile input against the store: client clocks, stray receipts, rows the database refuses.
//! Each test runs on the real broker with inboxd persisting into real SQLite or PostgreSQL.

use anyhow::{Context, Result, ensure};
use inboxd::store::{STORE_REFUSED, Store, StoreUrl};
use inboxd_e2e::MqttUser;
use inboxd_e2e::amqp::Observer;
use inboxd_e2e::db::TestDb;
use inboxd_e2e::eventually;
use serde_json::{Value, json};
use sqlx::{AnyPool, Executor};

use crate::util::{Chat, WAIT, expect_on};

/// 2100-01-01T00:00:00Z in ms: a client clock far ahead.
const YEAR_2100_MS: i64 = 4_102_444_800_000;

/// Both back ends.
async fn both_back_ends() -> Result<[TestDb; 2]> {
    Ok([TestDb::sqlite()?, TestDb::postgres().await?])
}

async fn open(db: &TestDb) -> Result<Store> {
    let url: StoreUrl = db.url().parse().map_err(anyhow::Error::msg)?;
    Store::open(&url).await?.context("the test store is not `none`")
}

/// A plain connection to the test database, for what the store API does not show.
async fn sql(db: &TestDb) -> Result<AnyPool> {
    sqlx::any::install_default_drivers();
    Ok(AnyPool::connect(db.url()).await?)
}

async fn chat_on(db: &TestDb, extra: &[(&str, &str)]) -> Result<Chat> {
    let chat = extra.iter().fold(Chat::builder().listen().store(db), |chat, (key, value)| chat.env(key, *value));
    chat.start().await
}

/// The next message copy `user` gets in conversation `with`.
async fn copy_from(chat: &Chat, user: &mut MqttUser, with: &str) -> Result<Value> {
    let me = user.user().to_owned();
    expect_on(user, &chat.topic(&format!("users/{me}/messages/{with}/clientadded"))).await
}

/// `user`'s conversation with `with` in the store: (last text, is_new).
async fn conversation(store: &Store, app: &str, user: &str, with: &str) -> Result<(Value, bool)> {
    let list = store.conversations(app, user, false, 100).await?;
    let entry = list.iter().find(|c| c["conversWith"] == with).with_context(|| format!("{user} has no {with}"))?;
    Ok((entry["text"].clone(), entry["is_new"] == true))
}

/// Announces group `id` with `members` (server side).
async fn announce(chat: &Chat, observer: &Observer, id: &str, name: &str, members: &[&str]) -> Result<()> {
    let members: serde_json::Map<String, Value> = members.iter().map(|m| ((*m).to_owned(), json!(1))).collect();
    let group = json!({"uid": id, "name": name, "owner": "alice", "members": members});
    observer
        .publish_json(
            &format!("apps.observer.{}.groups.update", chat.app),
            &json!({"group": group, "notify_to": members}),
        )
        .await
}

/// A message dated 2100 by its client, then a message of today: the second one becomes the
/// conversation's last message and marks it new again, for a direct chat and a stored group,
/// and the history is in the order inboxd received them.
#[tokio::test]
async fn a_client_clock_in_2100_does_not_freeze_conversations() -> Result<()> {
    for db in both_back_ends().await? {
        future_timestamp_on(&db).await.with_context(|| db.kind())?;
    }
    Ok(())
}

async fn future_timestamp_on(db: &TestDb) -> Result<()> {
    let chat = chat_on(db, &[]).await?;
    let (mut alice, mut bob, mut carol) =
        (chat.user("alice").await?, chat.user("bob").await?, chat.user("carol").await?);
    let observer = Observer::connect(chat.node).await?;
    let group = "group-clock";
    announce(&chat, &observer, group, "clock", &["alice", "bob", "carol"]).await?;
    for user in [&mut alice, &mut bob, &mut carol] {
        let me = user.user().to_owned();
        expect_on(user, &chat.topic(&format!("users/{me}/groups/{group}/clientupdated"))).await?;
    }
    let store = open(db).await?;
    let app = chat.app.clone();

    // Direct: alice's clock says 2100; bob reads it; then a message of today.
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "from 2100", "timestamp": YEAR_2100_MS})).await?;
    let future = copy_from(&chat, &mut bob, "alice").await?;
    copy_from(&chat, &mut alice, "bob").await?;
    eventually(WAIT, "the 2100 message is bob's last", || async {
        ensure!(conversation(&store, &app, "bob", "alice").await? == (json!("from 2100"), true));
        Ok(())
    })
    .await?;
    bob.publish_json(&chat.topic("users/bob/conversations/alice/update"), &json!({"is_new": false})).await?;
    expect_on(&mut bob, &chat.topic("users/bob/conversations/alice/clientupdated")).await?;
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "today"})).await?;
    let today = copy_from(&chat, &mut bob, "alice").await?;
    copy_from(&chat, &mut alice, "bob").await?;
    eventually(WAIT, "today's message replaces the 2100 one, and is new", || async {
        let seen = conversation(&store, &app, "bob", "alice").await?;
        ensure!(seen == (json!("today"), true), "bob's conversation with alice: {seen:?}");
        // chat21's observer marks the sender's own conversation new too.
        let seen = conversation(&store, &app, "alice", "bob").await?;
        ensure!(seen == (json!("today"), true), "alice's conversation with bob: {seen:?}");
        Ok(())
    })
    .await?;
    // Newest first by the time inboxd received them, each as bob received it.
    let history = store.messages(&app, "bob", "alice", None, 10).await?;
    ensure!(history == [today.clone(), future.clone()], "bob's history: {history:#?}");
    // Paging as clients do, `before` = the oldest `timestamp` seen (today's is inboxd's own, it
    // had none): the next page reaches the 2100 message (it may repeat today's, never skip).
    let first = store.messages(&app, "bob", "alice", None, 1).await?;
    ensure!(first == [today.clone()], "first page: {first:?}");
    let before = today["timestamp"].as_i64().context("today's timestamp")?;
    let next = store.messages(&app, "bob", "alice", Some(before), 10).await?;
    ensure!(next.last() == Some(&future) && next.iter().all(|m| *m == today || *m == future), "next page: {next:?}");

    // A stored group: alice's 2100 post pins nothing for anyone.
    let post = |text: &str, timestamp: Option<i64>| {
        let mut body = json!({"text": text, "channel_type": "group"});
        if let Some(timestamp) = timestamp {
            body["timestamp"] = json!(timestamp);
        }
        body
    };
    alice.publish_json(&alice.outgoing_topic(group), &post("group 2100", Some(YEAR_2100_MS))).await?;
    for user in [&mut alice, &mut bob, &mut carol] {
        copy_from(&chat, user, group).await?;
    }
    bob.publish_json(&chat.topic(&format!("users/bob/conversations/{group}/update")), &json!({"is_new": false}))
        .await?;
    expect_on(&mut bob, &chat.topic(&format!("users/bob/conversations/{group}/clientupdated"))).await?;
    carol.publish_json(&carol.outgoing_topic(group), &post("group today", None)).await?;
    for user in [&mut carol, &mut alice, &mut bob] {
        let copy = copy_from(&chat, user, group).await?;
        ensure!(copy["text"] == "group today", "{}: {copy}", user.user());
    }
    eventually(WAIT, "the group's conversations move on for every member", || async {
        for member in ["alice", "bob", "carol"] {
            let (text, is_new) = conversation(&store, &app, member, group).await?;
            ensure!(text == "group today" && is_new, "{member}: {text} {is_new}");
        }
        Ok(())
    })
    .await?;
    let history = store.messages(&app, "carol", group, None, 10).await?;
    let texts: Vec<&Value> = history.iter().map(|m| &m["text"]).collect();
    ensure!(texts == [&json!("group today"), &json!("group 2100")], "carol's group history: {texts:?}");
    store.close().await;
    chat.assert_ready().await?;
    chat.daemon.stop().await
}

/// Read receipts for a message id under another conversation, and for ids nobody has, change
/// no status and add no row; the receipt that names the right conversation still works.
#[tokio::test]
async fn receipts_touch_only_what_they_name() -> Result<()> {
    for db in both_back_ends().await? {
        stray_receipts_on(&db).await.with_context(|| db.kind())?;
    }
    Ok(())
}

async fn stray_receipts_on(db: &TestDb) -> Result<()> {
    let chat = chat_on(db, &[]).await?;
    let (mut alice, mut bob, mut carol) =
        (chat.user("alice").await?, chat.user("bob").await?, chat.user("carol").await?);
    let store = open(db).await?;
    let pool = sql(db).await?;
    let app = chat.app.clone();
    let rows = async || -> Result<i64> {
        let (count,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM inbox_timeline WHERE app = $1").bind(&app).fetch_one(&pool).await?;
        Ok(count)
    };

    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "hello"})).await?;
    let hello = copy_from(&chat, &mut bob, "alice").await?;
    copy_from(&chat, &mut alice, "bob").await?;
    let id = hello["message_id"].as_str().context("a message id")?.to_owned();
    eventually(WAIT, "hello is stored", || async {
        ensure!(store.messages(&app, "bob", "alice", None, 10).await? == std::slice::from_ref(&hello));
        Ok(())
    })
    .await?;
    ensure!(rows().await? == 2, "two copies of hello");

    // Bob names alice's message under his conversation with carol, and ids nobody has.
    bob.publish_json(&chat.topic(&format!("users/bob/messages/carol/{id}/update")), &json!({"status": 200})).await?;
    for i in 0..20 {
        let random = format!("0190aaaa-0000-7000-8000-{i:012}");
        bob.publish_json(&chat.topic(&format!("users/bob/messages/alice/{random}/update")), &json!({"status": 200}))
            .await?;
    }
    // Barriers: a message in each of those conversations. A conversation's events are handled in
    // order and written in order, so once these are stored the receipts before them were applied.
    bob.publish_json(&bob.outgoing_topic("carol"), &json!({"text": "barrier carol"})).await?;
    bob.publish_json(&bob.outgoing_topic("alice"), &json!({"text": "barrier alice"})).await?;
    let to_carol = loop {
        let (topic, body) = crate::util::next(&mut carol).await?;
        if topic.ends_with("/clientadded") {
            break body;
        }
    };
    let to_alice = loop {
        let (topic, body) = crate::util::next(&mut alice).await?;
        if topic.ends_with("/clientadded") {
            break body;
        }
    };
    ensure!(to_carol["text"] == "barrier carol" && to_alice["text"] == "barrier alice", "{to_carol} {to_alice}");
    eventually(WAIT, "the barriers are stored", || async {
        ensure!(store.messages(&app, "carol", "bob", None, 10).await? == std::slice::from_ref(&to_carol));
        ensure!(store.messages(&app, "alice", "bob", None, 10).await?.first() == Some(&to_alice));
        Ok(())
    })
    .await?;
    let history = store.messages(&app, "bob", "alice", None, 10).await?;
    ensure!(history.len() == 2 && history[1] == hello, "bob's hello changed: {history:#?}");
    let count = rows().await?;
    ensure!(count == 6, "{count} timeline rows: the receipts inserted some (expected hello, two barriers: 6)");

    // The receipt that names the right conversation raises both sides.
    bob.publish_json(&chat.topic(&format!("users/bob/messages/alice/{id}/update")), &json!({"status": 200})).await?;
    let receipt = expect_on(&mut alice, &chat.topic(&format!("users/alice/messages/bob/{id}/clientupdated"))).await?;
    ensure!(receipt["status"] == 250, "{receipt}");
    eventually(WAIT, "the named receipt is stored", || async {
        let bobs = store.messages(&app, "bob", "alice", None, 10).await?;
        let alices = store.messages(&app, "alice", "bob", None, 10).await?;
        ensure!(bobs[1]["status"] == 200 && alices[1]["status"] == 250, "{bobs:?} {alices:?}");
        Ok(())
    })
    .await?;
    ensure!(rows().await? == 6, "the named receipt inserted a row");
    pool.close().await;
    store.close().await;
    chat.assert_ready().await?;
    chat.daemon.stop().await
}

/// On PostgreSQL, which refuses U+0000 in text: a message text with NUL and a group name with
/// NUL stall nothing. Both are stored (the message's JSON escapes it; the group's name column
/// holds U+FFFD instead), nothing is dead-lettered, and the next message from another user is
/// delivered and stored.
#[tokio::test]
async fn nul_characters_do_not_stall_postgres() -> Result<()> {
    let db = TestDb::postgres().await?;
    let chat = chat_on(&db, &[]).await?;
    let (alice, mut bob, mut carol) = (chat.user("alice").await?, chat.user("bob").await?, chat.user("carol").await?);
    let observer = Observer::connect(chat.node).await?;
    let store = open(&db).await?;
    let app = chat.app.clone();

    announce(&chat, &observer, "group-nul", "nul\u{0}name", &["bob", "carol"]).await?;
    expect_on(&mut bob, &chat.topic("users/bob/groups/group-nul/clientupdated")).await?;
    expect_on(&mut carol, &chat.topic("users/carol/groups/group-nul/clientupdated")).await?;
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "nul\u{0}text"})).await?;
    let nul = copy_from(&chat, &mut bob, "alice").await?;
    ensure!(nul["text"] == "nul\u{0}text", "{nul}");
    carol.publish_json(&carol.outgoing_topic("bob"), &json!({"text": "next"})).await?;
    let next = copy_from(&chat, &mut bob, "carol").await?;
    carol.publish_json(&carol.outgoing_topic("group-nul"), &json!({"text": "to the group"})).await?;
    let in_group = copy_from(&chat, &mut bob, "group-nul").await?;

    eventually(WAIT, "everything is stored", || async {
        ensure!(store.messages(&app, "bob", "carol", None, 10).await? == [next.clone()], "carol's next message");
        ensure!(store.messages(&app, "bob", "alice", None, 10).await? == [nul.clone()], "the NUL message");
        ensure!(store.messages(&app, "bob", "group-nul", None, 10).await? == [in_group.clone()], "the group post");
        Ok(())
    })
    .await?;
    let group = store.group(&app, "group-nul").await?.context("the group is stored")?;
    ensure!(group.name.as_deref() == Some("nul\u{0}name") && group.members == ["bob", "carol"], "{group:?}");
    let pool = sql(&db).await?;
    let (name,): (String,) =
        sqlx::query_as("SELECT name FROM chat_groups WHERE app = $1").bind(&app).fetch_one(&pool).await?;
    ensure!(name == "nul\u{FFFD}name", "the name column holds {name:?}");
    let dead = observer.queue_len(&format!("inboxd.{app}.dead")).await?;
    ensure!(dead == 0, "{dead} deliveries dead-lettered");
    pool.close().await;
    store.close().await;
    chat.assert_ready().await?;
    chat.daemon.stop().await
}

/// PostgreSQL refuses one delivery's row (a check constraint the operator added): that delivery
/// is not published but dead-lettered with `store-refused` and the database's message, the rest
/// of its batch is committed, nothing is redelivered, and the messages after it flow and are stored.
#[tokio::test]
async fn a_row_postgres_refuses_is_dead_lettered_and_the_rest_flows() -> Result<()> {
    const BEFORE: usize = 5;
    let db = TestDb::postgres().await?;
    let constraint = "ALTER TABLE inbox_timeline ADD CONSTRAINT refuse_marked \
                      CHECK (body IS NULL OR body NOT LIKE '%refuse-me%')";
    let chat = chat_on(&db, &[]).await?;
    let pool = sql(&db).await?;
    pool.execute(constraint).await.context("setup failed: adding the check constraint")?;
    let (alice, mut bob, carol) = (chat.user("alice").await?, chat.user("bob").await?, chat.user("carol").await?);
    let observer = Observer::connect(chat.node).await?;
    let store = open(&db).await?;
    let (app, queue) = (chat.app.clone(), format!("inboxd.{}", chat.app));

    // In one burst, so that the refused delivery shares its batch with others.
    for i in 0..BEFORE {
        alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": format!("a{i}")})).await?;
        if i == 2 {
            alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "refuse-me"})).await?;
        }
    }
    carol.publish_json(&carol.outgoing_topic("bob"), &json!({"text": "from carol"})).await?;
    // Copies wait for their writes' commit (durable ids): the refused message is not published.
    let received = bob.recv_n(BEFORE + 1, WAIT).await?;
    let texts: Vec<Value> = received.iter().map(|m| m.json().map(|j| j["text"].clone())).collect::<Result<_>>()?;
    ensure!(!texts.contains(&json!("refuse-me")), "the refused message was published: {texts:?}");

    let dead = observer.get_within(&format!("{queue}.dead"), WAIT).await?.context("nothing was dead-lettered")?;
    ensure!(dead.header("x-inboxd-reason").as_deref() == Some(STORE_REFUSED), "{dead:?}");
    let error = dead.header("x-inboxd-error").unwrap_or_default();
    ensure!(error.contains("refuse_marked"), "x-inboxd-error: {error}");
    ensure!(dead.json()?["text"] == "refuse-me", "the dead letter is the delivery as sent: {dead:?}");
    ensure!(dead.header("x-inboxd-routing-key").is_some_and(|k| k.ends_with("users.alice.messages.bob.outgoing")));

    carol.publish_json(&carol.outgoing_topic("bob"), &json!({"text": "after"})).await?;
    copy_from(&chat, &mut bob, "carol").await?;
    let expected: Vec<String> = (0..BEFORE).rev().map(|i| format!("a{i}")).collect();
    eventually(WAIT, "everything else is stored", || async {
        let stored = store.messages(&app, "bob", "alice", None, 100).await?;
        let texts: Vec<String> = stored.iter().map(|m| m["text"].as_str().unwrap_or("").to_owned()).collect();
        ensure!(texts == expected, "bob's history with alice: {texts:?}");
        let from_carol = store.messages(&app, "bob", "carol", None, 10).await?;
        ensure!(from_carol.len() == 2, "bob's history with carol: {from_carol:?}");
        ensure!(observer.queue_len(&queue).await? == 0, "deliveries wait in the queue");
        Ok(())
    })
    .await?;
    // Acked once dead-lettered: not redelivered, so not dead-lettered again. A second refused
    // message in the same conversation comes after any redelivery of the first: the next dead
    // letter must be it, and then none is left.
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "refuse-me again"})).await?;
    let next = observer.get_within(&format!("{queue}.dead"), WAIT).await?.context("the second refusal")?;
    ensure!(next.json()?["text"] == "refuse-me again", "dead-lettered twice: {next:?}");
    ensure!(observer.queue_len(&format!("{queue}.dead")).await? == 0, "more dead letters");
    pool.close().await;
    store.close().await;
    chat.assert_ready().await?;
    chat.daemon.stop().await
}

/// More stored groups than `[store] group_cache` holds: every group still routes to its
/// members (the directory reads what it does not hold), and an unknown group does not reach them.
#[tokio::test]
async fn more_groups_than_the_cache_all_route() -> Result<()> {
    const GROUPS: usize = 6;
    let db = TestDb::sqlite()?;
    let chat = chat_on(&db, &[("INBOXD_STORE_GROUP_CACHE", "2")]).await?;
    let (mut alice, mut bob) = (chat.user("alice").await?, chat.user("bob").await?);
    let observer = Observer::connect(chat.node).await?;
    for i in 0..GROUPS {
        let id = format!("group-lru-{i}");
        announce(&chat, &observer, &id, "lru", &["alice", "bob"]).await?;
        for user in [&mut alice, &mut bob] {
            let me = user.user().to_owned();
            expect_on(user, &chat.topic(&format!("users/{me}/groups/{id}/clientupdated"))).await?;
        }
    }
    let store = open(&db).await?;
    eventually(WAIT, "every group is stored", || async {
        for i in 0..GROUPS {
            store.group(&chat.app, &format!("group-lru-{i}")).await?.context("not yet")?;
        }
        Ok(())
    })
    .await?;
    store.close().await;
    for round in 0..2 {
        for i in 0..GROUPS {
            let id = format!("group-lru-{i}");
            let text = format!("round {round} to {i}");
            alice.publish_json(&alice.outgoing_topic(&id), &json!({"text": text, "channel_type": "group"})).await?;
            for user in [&mut alice, &mut bob] {
                let copy = copy_from(&chat, user, &id).await?;
                ensure!(copy["text"] == text.as_str() && copy["status"] != -100, "{}: {copy}", user.user());
            }
        }
    }
    chat.assert_ready().await?;
    chat.daemon.stop().await
}
