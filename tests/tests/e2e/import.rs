//! `inboxd import chat21` end to end, on SQLite and PostgreSQL: a `mongoexport` file set in
//! chat21's own document shapes (as chat21-server's and chat21-http-server's `chatdb` write them)
//! is refused whole when one line is malformed, then imported twice into a fresh store; inboxd
//! starts on it, chat21client.js reads the imported conversations and messages over the history
//! API, and a message to an imported group reaches its members over MQTT.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use inboxd_e2e::daemon::cli;
use inboxd_e2e::db::TestDb;
use inboxd_e2e::unique_id;
use serde_json::{Value, json};

use crate::util::{expect_on, js_client, tilechat_with_api};

/// When the exported history happened: an hour ago, a second per step.
fn at(step: i64) -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    i64::try_from(now).unwrap_or(i64::MAX) - 3_600_000 + step * 1000
}

/// The users and group of one test's chat21 data.
struct People {
    alice: String,
    bob: String,
    carol: String,
    group: String,
}

/// A chat21 message document: the delivered message plus `timelineOf`, `conversWith` and
/// `app_id` (chat21-server's `process_persist`), with `_id` and numbers in canonical Extended JSON.
/// `timeline` is (`timelineOf`, `conversWith`), `sent` (`sender`, `recipient`).
fn message(timeline: (&str, &str), sent: (&str, &str), id: &str, text: &str, status: i64, step: i64) -> Value {
    let ((timeline_of, convers_with), (sender, recipient)) = (timeline, sent);
    let group = recipient.starts_with("group-");
    json!({
        "_id": {"$oid": "65a1b2c3d4e5f60718293a4b"},
        "text": text, "type": "text", "sender": sender, "sender_fullname": sender,
        "recipient": recipient, "recipient_fullname": recipient,
        "channel_type": if group { "group" } else { "direct" },
        "attributes": {"client": "web"}, "metadata": "",
        "message_id": id, "app_id": "tilechat", "timelineOf": timeline_of, "conversWith": convers_with,
        "status": {"$numberInt": status.to_string()}, "timestamp": {"$numberLong": at(step).to_string()},
    })
}

/// A chat21 conversation document: the last message plus the list fields (`process_persist`),
/// in relaxed Extended JSON.
fn conversation(timeline_of: &str, convers_with: &str, last: &Value, is_new: bool, archived: bool) -> Value {
    let mut doc = last.clone();
    doc["_id"] = json!({"$oid": "65a1b2c3d4e5f60718293a4c"});
    doc["timelineOf"] = json!(timeline_of);
    doc["conversWith"] = json!(convers_with);
    doc["key"] = json!(convers_with);
    doc["is_new"] = json!(is_new);
    doc["archived"] = json!(archived);
    doc["last_message_text"] = last["text"].clone();
    doc["status"] = json!(150);
    doc["timestamp"] = json!(last["timestamp"]["$numberLong"].as_str().and_then(|t| t.parse::<i64>().ok()));
    doc
}

/// Writes the export of each collection: groups and messages one document per line
/// (mongoexport's default), conversations as `--jsonArray`. Returns the message ids.
fn export(dir: &Path, p: &People) -> Result<(String, String)> {
    let (m1, m2, m3, m4) = (unique_id("m1"), unique_id("m2"), unique_id("m3"), unique_id("m4"));
    // chat21-http-server's createGroup: `{name, uid, appId, owner, members, createdOn, updatedOn}`.
    let members = json!({&p.alice: 1, &p.bob: 1, &p.carol: 1});
    let groups = [
        json!({"_id": {"$oid": "65a1b2c3d4e5f60718293a4d"}, "name": "Support", "uid": &p.group, "appId": "tilechat",
            "owner": &p.alice, "members": members, "createdOn": {"$date": "2024-01-12T10:00:00Z"}, "updatedOn": at(0)}),
        json!({"uid": unique_id("group"), "name": "elsewhere", "appId": "another-app", "members": {&p.alice: 1}}),
    ];
    let hello = message((&p.bob, &p.alice), (&p.alice, &p.bob), &m1, "hello bob", 200, 1);
    let reply = message((&p.alice, &p.bob), (&p.bob, &p.alice), &m2, "hi alice", 100, 2);
    let reply_bob = message((&p.bob, &p.alice), (&p.bob, &p.alice), &m2, "hi alice", 100, 2);
    let joined = message((&p.bob, &p.group), ("system", &p.group), &m3, "bob joined group on creation", 150, 3);
    let carol_bob = message((&p.bob, &p.carol), (&p.carol, &p.bob), &m4, "old news", 150, 0);
    let messages = [
        message((&p.alice, &p.bob), (&p.alice, &p.bob), &m1, "hello bob", 250, 1),
        hello,
        reply.clone(),
        reply_bob.clone(),
        joined.clone(),
        carol_bob.clone(),
        // A read receipt chat21-server upserted for a message it did not have.
        json!({"timelineOf": &p.carol, "message_id": unique_id("gone"), "status": 200}),
    ];
    let conversations = json!([
        conversation(&p.bob, &p.alice, &reply_bob, true, false),
        conversation(&p.alice, &p.bob, &reply, false, false),
        conversation(&p.bob, &p.group, &joined, true, false),
        conversation(&p.bob, &p.carol, &carol_bob, false, true),
        // An archive patch on a conversation chat21 did not have (no app_id).
        {"timelineOf": &p.carol, "conversWith": &p.alice, "archived": true},
    ]);
    let lines = |docs: &[Value]| docs.iter().map(|d| format!("{d}\n")).collect::<String>();
    std::fs::write(dir.join("groups.json"), lines(&groups))?;
    std::fs::write(dir.join("messages.json"), lines(&messages))?;
    std::fs::write(dir.join("conversations.json"), serde_json::to_string_pretty(&conversations)?)?;
    // The same messages with a truncated second line.
    let mut bad = lines(&messages[..1]);
    bad.push_str("{\"timelineOf\": \"x\", \"message_id\": \n");
    bad.push_str(&lines(&messages[1..]));
    std::fs::write(dir.join("bad-messages.json"), bad)?;
    Ok((m1, m2))
}

/// What the store holds for `p`: every conversation list and timeline, and the group.
async fn snapshot(url: &str, p: &People) -> Result<Vec<Value>> {
    let store = inboxd::store::Store::open_existing(&url.parse().map_err(anyhow::Error::msg)?)
        .await?
        .context("setup failed: no store")?;
    let mut seen = Vec::new();
    for user in [&p.alice, &p.bob, &p.carol] {
        for archived in [false, true] {
            seen.push(Value::from(store.conversations("tilechat", user, archived, 100).await?));
        }
        for other in [&p.alice, &p.bob, &p.carol, &p.group] {
            seen.push(Value::from(store.messages("tilechat", user, other, None, 100).await?));
        }
    }
    let group = store.group("tilechat", &p.group).await?.context("the group was not imported")?;
    seen.push(json!([group.members, group.body]));
    store.close().await;
    Ok(seen)
}

async fn import_on(db: TestDb) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("inboxd-import-").tempdir()?;
    let p = People {
        alice: unique_id("alice"),
        bob: unique_id("bob"),
        carol: unique_id("carol"),
        group: unique_id("group"),
    };
    let (m1, m2) = export(dir.path(), &p)?;
    let file = |name: &str| dir.path().join(name).display().to_string();
    let env = HashMap::from([
        ("INBOXD_STORE_URL".to_owned(), db.url().to_owned()),
        ("INBOXD_APP_ID".to_owned(), "tilechat".to_owned()),
    ]);
    let (groups, messages, conversations) = (file("groups.json"), file("messages.json"), file("conversations.json"));

    // One malformed line refuses the whole import, naming file and line; nothing is written.
    let bad = file("bad-messages.json");
    let out = cli(&["import", "chat21", "--groups", &groups, "--messages", &bad], &env).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "{}: a malformed file was imported: {out:?}", db.kind());
    ensure!(stderr.contains("nothing imported") && stderr.contains(&format!("{bad}: line 2: not JSON")), "{stderr}");
    let store = inboxd::store::Store::open_existing(&db.url().parse().map_err(anyhow::Error::msg)?)
        .await?
        .context("setup failed: no store")?;
    ensure!(store.group("tilechat", &p.group).await?.is_none(), "the refused import wrote the group");
    ensure!(store.messages("tilechat", &p.alice, &p.bob, None, 100).await?.is_empty(), "it wrote messages");
    store.close().await;

    // Twice: the same report, the same store.
    let args = ["import", "chat21", "--groups", &groups, "--messages", &messages, "--conversations", &conversations];
    let mut reports = Vec::new();
    let mut stored = Vec::new();
    for run in 1..=2 {
        let out = cli(&args, &env).await?;
        ensure!(out.status.success(), "{} run {run}: {}", db.kind(), String::from_utf8_lossy(&out.stderr));
        reports.push(String::from_utf8(out.stdout)?);
        stored.push(snapshot(db.url(), &p).await?);
    }
    ensure!(stored[0] == stored[1], "{}: the second run changed the store: {stored:#?}", db.kind());
    let expected = "groups: 2 read, 1 imported, 1 skipped of another app\n\
        messages: 7 read, 6 imported, 1 skipped patches without their document (chat21 never showed them)\n\
        conversations: 5 read, 4 imported, 1 skipped patches without their document (chat21 never showed them)\n";
    ensure!(reports[0] == expected && reports[1] == expected, "{}: {reports:#?}", db.kind());

    // inboxd on the imported store, chat21client.js as bob.
    let (chat, address) = tilechat_with_api(&db).await?;
    let mut client = js_client(&chat, address, &p.bob).await?;

    // chat21client.js reads bob's imported conversations, newest first, with chat21's flags.
    let live = client.call("lastConversations", json!([false])).await?;
    ensure!(live[0] == Value::Null, "lastConversations failed: {live:?}");
    let list = live[1].as_array().cloned().unwrap_or_default();
    let with: Vec<&Value> = list.iter().map(|c| &c["conversWith"]).collect();
    ensure!(with == [&json!(p.group), &json!(p.alice)], "{}: {list:#?}", db.kind());
    ensure!(
        list[1]["text"] == "hi alice" && list[1]["is_new"] == true && list[1]["timelineOf"] == p.bob.as_str(),
        "{list:#?}"
    );
    let archived = client.call("lastConversations", json!([true])).await?;
    let archived = archived[1].as_array().cloned().unwrap_or_default();
    ensure!(archived.len() == 1 && archived[0]["conversWith"] == p.carol.as_str(), "{archived:#?}");
    // ... and the history with alice, newest first, with the statuses chat21 had.
    let history = client.call("lastMessages", json!([p.alice])).await?;
    ensure!(history[0] == Value::Null, "lastMessages failed: {history:?}");
    let history = history[1].as_array().cloned().unwrap_or_default();
    let seen: Vec<(&Value, &Value)> = history.iter().map(|m| (&m["message_id"], &m["status"])).collect();
    ensure!(seen == [(&json!(m2), &json!(100)), (&json!(m1), &json!(200))], "{}: {history:#?}", db.kind());
    ensure!(history[1]["text"] == "hello bob" && history[1].get("_id").is_none(), "{history:#?}");

    // The imported group routes: alice's message reaches bob (chat21client.js) and carol.
    let alice = chat.user(&p.alice).await?;
    let mut carol = chat.user(&p.carol).await?;
    alice
        .publish_json(&alice.outgoing_topic(&p.group), &json!({"text": "after the move", "channel_type": "group"}))
        .await?;
    let topic = chat.topic(&format!("users/{}/messages/{}/clientadded", p.carol, p.group));
    let copy = expect_on(&mut carol, &topic).await?;
    ensure!(copy["text"] == "after the move" && copy["sender"] == p.alice.as_str(), "{copy}");
    let added = client
        .event("onMessageAdded in the imported group", |e| {
            e.name == "onMessageAdded" && e.args[0]["recipient"] == p.group.as_str()
        })
        .await?;
    ensure!(added.args[0]["text"] == "after the move", "{:?}", added.args);
    chat.daemon.stop().await
}

#[tokio::test]
async fn sqlite_chat21_export_imports_idempotently_and_serves() -> Result<()> {
    import_on(TestDb::sqlite()?).await
}

#[tokio::test]
async fn postgres_chat21_export_imports_idempotently_and_serves() -> Result<()> {
    import_on(TestDb::postgres().await?).await
}
