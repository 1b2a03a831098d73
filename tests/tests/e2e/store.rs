//! Persistence end to end, on SQLite and on PostgreSQL: each user's stored history is what
//! their clients received, stored groups route and refuse, and nothing waits on a dead database.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use inboxd::store::{Store, StoreUrl};
use inboxd_e2e::MqttUser;
use inboxd_e2e::amqp::Observer;
use inboxd_e2e::daemon::{HttpAnswer, free_address, http_get_with, http_request};
use inboxd_e2e::db::TestDb;
use inboxd_e2e::eventually;
use inboxd_e2e::jwt::TokenOptions;
use serde_json::{Value, json};
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

use crate::util::{Chat, WAIT, expect_on, next};

/// What one user's clients saw: per conversation, the messages (latest status applied).
#[derive(Default)]
struct Seen {
    timelines: BTreeMap<String, Vec<Value>>,
}

impl Seen {
    /// Records what `user` receives next on a message topic, and returns it.
    async fn receive(&mut self, user: &mut MqttUser) -> Result<(String, Value)> {
        let (topic, body) = next(user).await?;
        let words: Vec<&str> = topic.split('/').collect();
        match words.as_slice() {
            [.., "messages", conversation, "clientadded"] => {
                self.timelines.entry((*conversation).to_owned()).or_default().push(body.clone());
            }
            [.., "messages", conversation, message_id, "clientupdated"] => {
                self.set_status(conversation, message_id, body["status"].clone());
            }
            _ => {}
        }
        Ok((topic, body))
    }

    fn set_status(&mut self, conversation: &str, message_id: &str, status: Value) {
        for message in self.timelines.entry(conversation.to_owned()).or_default() {
            if message["message_id"] == message_id {
                message["status"] = status.clone();
            }
        }
    }

    /// Newest first, as the history returns it.
    fn history(&self, conversation: &str) -> Vec<Value> {
        let mut messages = self.timelines.get(conversation).cloned().unwrap_or_default();
        messages.reverse();
        messages
    }
}

async fn open(db: &TestDb) -> Result<Store> {
    let url: StoreUrl = db.url().parse().map_err(anyhow::Error::msg)?;
    Store::open(&url).await?.context("the test store is not `none`")
}

/// A chat whose inboxd persists into `db`.
async fn chat_on(db: &TestDb) -> Result<Chat> {
    Chat::builder().store(db).start().await
}

/// Direct messages, a read receipt, a conversation update, a stored group's exchange, a
/// refused outsider and an archive; then each user's stored history equals what they saw.
async fn history_matches_clients(db: TestDb) -> Result<()> {
    let chat = chat_on(&db).await?;
    let group = "group-s";
    let mut users = Users::new();
    for name in ["alice", "bob", "carol", "mallory"] {
        users.insert(name, (chat.user(name).await?, Seen::default()));
    }
    let observer = Observer::connect(chat.node).await?;
    let members = json!({"alice": 1, "bob": 1, "carol": 1});
    let announced = json!({"uid": group, "name": "S", "owner": "alice", "members": members});
    observer
        .publish_json(
            &format!("apps.observer.{}.groups.update", chat.app),
            &json!({"group": announced, "notify_to": members}),
        )
        .await?;
    for name in ["alice", "bob", "carol"] {
        let (user, _) = users.get_mut(name).expect("listed above");
        expect_on(user, &chat.topic(&format!("users/{name}/groups/{group}/clientupdated"))).await?;
    }

    let hi = send(&mut users, "alice", "bob", json!({"text": "hi bob", "timestamp": 1000}), &["alice", "bob"]).await?;
    send(&mut users, "bob", "alice", json!({"text": "hi alice", "timestamp": 2000}), &["bob", "alice"]).await?;

    let id = hi["message_id"].as_str().context("message id")?.to_owned();
    let (bob, bob_seen) = users.get_mut("bob").expect("a test user");
    bob.publish_json(&chat.topic(&format!("users/bob/messages/alice/{id}/update")), &json!({"status": 200})).await?;
    bob_seen.set_status("alice", &id, json!(200));
    let (alice, alice_seen) = users.get_mut("alice").expect("a test user");
    let (topic, receipt) = alice_seen.receive(alice).await?;
    ensure!(topic.ends_with(&format!("/{id}/clientupdated")) && receipt["status"] == 250, "{topic}: {receipt}");

    let team = json!({"text": "team", "channel_type": "group", "timestamp": 3000});
    send(&mut users, "alice", group, team, &["alice", "bob", "carol"]).await?;
    let outsider = json!({"text": "let me in", "channel_type": "group", "timestamp": 3500});
    let failed = send(&mut users, "mallory", group, outsider, &["mallory"]).await?;
    ensure!(failed["status"] == -100 && failed["attributes"]["rejection"]["code"] == "not-a-member", "{failed}");
    // Same group, same worker, in order: whoever got mallory's post would see it before this one.
    let after = json!({"text": "after", "channel_type": "group", "timestamp": 4000});
    send(&mut users, "carol", group, after, &["carol", "alice", "bob"]).await?;

    let (bob, _) = users.get_mut("bob").expect("a test user");
    bob.publish_json(&chat.topic("users/bob/conversations/alice/update"), &json!({"is_new": false})).await?;
    expect_on(bob, &chat.topic("users/bob/conversations/alice/clientupdated")).await?;
    let (carol, _) = users.get_mut("carol").expect("a test user");
    carol.publish_json(&chat.topic(&format!("users/carol/conversations/{group}/archive")), &json!({})).await?;
    expect_on(carol, &chat.topic(&format!("users/carol/conversations/{group}/clientdeleted"))).await?;
    expect_on(carol, &chat.topic(&format!("users/carol/archived_conversations/{group}/clientadded"))).await?;

    let store = open(&db).await?;
    let app = chat.app.clone();
    for (name, (_, seen)) in &users {
        for conversation in seen.timelines.keys() {
            let expected = seen.history(conversation);
            eventually(WAIT, &format!("{} history of {name} with {conversation}", db.kind()), || async {
                let stored = store.messages(&app, name, conversation, None, 100).await?;
                ensure!(stored == expected, "stored {stored:#?}\nreceived {expected:#?}");
                Ok(())
            })
            .await?;
        }
    }
    let list = |user: &'static str, archived: bool| {
        let (store, app) = (&store, &app);
        async move {
            let conversations = store.conversations(app, user, archived, 100).await?;
            Ok::<_, anyhow::Error>(
                conversations
                    .iter()
                    .map(|c| {
                        (c["conversWith"].as_str().unwrap_or("").to_owned(), c["is_new"] == true, c["text"].clone())
                    })
                    .collect::<Vec<_>>(),
            )
        }
    };
    let text = |t: &str| Value::String(t.to_owned());
    eventually(WAIT, "conversation lists", || async {
        let alice = list("alice", false).await?;
        ensure!(
            alice == vec![(group.into(), true, text("after")), ("bob".into(), true, text("hi alice"))],
            "alice: {alice:?}"
        );
        let bob = list("bob", false).await?;
        ensure!(
            bob == vec![(group.into(), true, text("after")), ("alice".into(), false, text("hi alice"))],
            "bob: {bob:?}"
        );
        ensure!(list("carol", false).await?.is_empty(), "carol's live list");
        let archived = list("carol", true).await?;
        ensure!(archived == vec![(group.into(), true, text("after"))], "carol archived: {archived:?}");
        ensure!(list("mallory", false).await?.is_empty(), "a refused post makes no conversation");
        Ok(())
    })
    .await?;
    let stored = store.group(&app, group).await?.context("the group is stored")?;
    ensure!(stored.members == ["alice", "bob", "carol"] && stored.name.as_deref() == Some("S"), "{stored:?}");
    store.close().await;
    chat.daemon.stop().await
}

type Users = BTreeMap<&'static str, (MqttUser, Seen)>;

/// `from` sends `body` to `to`; each of `readers` receives a copy with the same text, in turn.
async fn send(users: &mut Users, from: &str, to: &str, body: Value, readers: &[&'static str]) -> Result<Value> {
    let (user, _) = users.get_mut(from).context("a test user")?;
    user.publish_json(&user.outgoing_topic(to), &body).await?;
    let mut copy = Value::Null;
    for reader in readers {
        let (user, seen) = users.get_mut(reader).context("a test user")?;
        let (topic, body) = seen.receive(user).await?;
        ensure!(topic.ends_with("/clientadded") && body["text"] == copy_text(&copy, &body), "{reader}: {topic}");
        copy = body;
    }
    Ok(copy)
}

/// The text a reader must see: the first reader's copy sets it.
fn copy_text(first: &Value, body: &Value) -> Value {
    if first.is_null() { body["text"].clone() } else { first["text"].clone() }
}

#[tokio::test]
async fn sqlite_history_matches_what_clients_received() -> Result<()> {
    history_matches_clients(TestDb::sqlite()?).await
}

#[tokio::test]
async fn postgres_history_matches_what_clients_received() -> Result<()> {
    history_matches_clients(TestDb::postgres().await?).await
}

/// The history API answers a user's own questions with their data and refuses everyone else.
#[tokio::test]
async fn history_api_serves_only_the_token_owner() -> Result<()> {
    let db = TestDb::sqlite()?;
    let address = free_address()?;
    let chat = Chat::builder().store(&db).api(address).start().await?;
    let mut alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let observer = Observer::connect(chat.node).await?;
    let group = json!({"uid": "group-api", "name": "A", "members": {"alice": 1, "bob": 1}});
    let update = json!({"group": group, "notify_to": {"alice": 1}});
    observer.publish_json(&format!("apps.observer.{}.groups.update", chat.app), &update).await?;
    expect_on(&mut alice, &chat.topic("users/alice/groups/group-api/clientupdated")).await?;
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "hi bob"})).await?;
    let received = expect_on(&mut bob, &chat.topic("users/bob/messages/alice/clientadded")).await?;

    let issuer = chat.node.issuer();
    let token = |user: &str| issuer.mint(user, &chat.app, &TokenOptions::default());
    let (alice_token, bob_token, carol_token) = (token("alice")?, token("bob")?, token("carol")?);
    let get = async |path: String, token: Option<&str>| {
        let header = token.map(|t| format!("JWT {t}"));
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("Authorization", h.as_str())).collect();
        let (status, body) = http_get_with(address, &path, &headers).await?;
        let body: Value = serde_json::from_str(&body).with_context(|| format!("{path}: {body}"))?;
        anyhow::Ok((status, body))
    };
    let app = chat.app.clone();
    let bobs_messages = format!("/api/{app}/bob/conversations/alice/messages?limit=10");
    eventually(WAIT, "bob's history through the API", || async {
        let (status, body) = get(bobs_messages.clone(), Some(&bob_token)).await?;
        ensure!(status == 200 && body["result"] == json!([received]), "{status}: {body}");
        Ok(())
    })
    .await?;
    let (status, body) = get(format!("/api/{app}/bob/conversations"), Some(&bob_token)).await?;
    ensure!(status == 200 && body["result"][0]["conversWith"] == "alice", "{status}: {body}");
    let (status, body) = get(format!("/api/{app}/bob/archived_conversations"), Some(&bob_token)).await?;
    ensure!(status == 200 && body["result"] == json!([]), "{status}: {body}");
    // Another user's token (chat21's 401), no token, a forged token (chat21's 403): nothing.
    for (token, expected) in [(Some(alice_token.as_str()), 401), (None, 403), (Some("e30.e30.e30"), 403)] {
        let (status, body) = get(bobs_messages.clone(), token).await?;
        ensure!(status == expected && body["result"].is_null(), "{token:?}: {status}: {body}");
    }
    let (status, body) = get(format!("/api/{app}/groups/group-api"), Some(&alice_token)).await?;
    ensure!(status == 200 && body["result"] == group, "{status}: {body}");
    let (status, _) = get(format!("/api/{app}/groups/group-api"), Some(&carol_token)).await?;
    ensure!(status == 404, "a non-member sees no group: {status}");
    chat.daemon.stop().await
}

/// chat21's own clients read the history as they read chat21-http-server: the token bare in
/// `Authorization` (chat21client.js), prefixed, or in `?jwt=`/`?JWT=`/`?token=` (the node SDK);
/// Tiledesk's tokens (`aud` a list, `tiledesk_api_roles`), its admin reading any user; chat21's
/// `403 Unauthorized.` without a valid token; the archived list and both conversation details;
/// and CORS for browsers on every answer, the preflight before any token check.
#[tokio::test]
async fn chat21_clients_read_history_with_their_tokens_and_cors() -> Result<()> {
    let db = TestDb::sqlite()?;
    let address = free_address()?;
    let chat = Chat::builder().store(&db).api(address).start().await?;
    let app = chat.app.clone();
    let alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let carol = chat.user("carol").await?;
    let observer = Observer::connect(chat.node).await?;
    let group = json!({"uid": "group-td", "name": "support", "members": {"alice": 1, "carol": 1}});
    let update = json!({"group": group, "notify_to": {}});
    observer.publish_json(&format!("apps.observer.{app}.groups.update"), &update).await?;
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "hi bob"})).await?;
    let from_alice = expect_on(&mut bob, &chat.topic("users/bob/messages/alice/clientadded")).await?;
    carol.publish_json(&carol.outgoing_topic("bob"), &json!({"text": "hi from carol"})).await?;
    expect_on(&mut bob, &chat.topic("users/bob/messages/carol/clientadded")).await?;
    bob.publish_json(&chat.topic("users/bob/conversations/carol/archive"), &json!({})).await?;
    expect_on(&mut bob, &chat.topic("users/bob/conversations/carol/clientdeleted")).await?;
    expect_on(&mut bob, &chat.topic("users/bob/archived_conversations/carol/clientadded")).await?;

    let issuer = chat.node.issuer();
    let bare = issuer.mint("bob", &app, &TokenOptions::default())?;
    // Tiledesk's shapes: `aud: ["rabbitmq", <uid>]` and a role; its admin is another user.
    let tiledesk = |user: &str, role: &str, token_app: &str| {
        let mut claims = issuer.claims(user, token_app)?;
        claims.insert("aud".into(), json!(["rabbitmq", user]));
        claims.insert("tiledesk_api_roles".into(), json!(role));
        issuer.sign(&claims)
    };
    let (tiledesk_bob, tiledesk_alice) = (tiledesk("bob", "user", &app)?, tiledesk("alice", "user", &app)?);
    let (admin, other_admin) = (tiledesk("100-APIADMIN", "admin", &app)?, tiledesk("100-APIADMIN", "admin", "other")?);
    let expired = issuer.mint("bob", &app, &TokenOptions { expired: true, ..TokenOptions::default() })?;
    let call = async |method: &str, path: &str, headers: &[(&str, &str)]| {
        let answer = http_request(address, method, path, headers).await?;
        ensure!(answer.header("access-control-allow-origin") == Some("*"), "{method} {path}: no CORS: {answer:?}");
        anyhow::Ok(answer)
    };
    let get = async |path: &str, headers: &[(&str, &str)]| {
        let answer: HttpAnswer = call("GET", path, headers).await?;
        let body: Value = serde_json::from_str(&answer.body).with_context(|| format!("{path}: {answer:?}"))?;
        anyhow::Ok((answer.status, body))
    };

    let messages = format!("/api/{app}/bob/conversations/alice/messages");
    eventually(WAIT, "bob's history with a bare token", || async {
        let (status, body) = get(&messages, &[("Authorization", &bare)]).await?;
        ensure!(status == 200 && body == json!({"success": true, "result": [from_alice]}), "{status}: {body}");
        Ok(())
    })
    .await?;
    let (jwt, bearer, basic) = (format!("JWT {bare}"), format!("Bearer {tiledesk_bob}"), "Basic Ym9iOnB3");
    let ways: [(String, Vec<(&str, &str)>); 9] = [
        (messages.clone(), vec![("Authorization", &jwt)]),
        (messages.clone(), vec![("Authorization", &bearer)]),
        (messages.clone(), vec![("Authorization", &tiledesk_bob)]),
        (format!("{messages}?jwt={bare}"), vec![]),
        (format!("{messages}?JWT={bare}"), vec![]),
        (format!("{messages}?token={tiledesk_bob}"), vec![]),
        (format!("{messages}?token={bare}"), vec![("Authorization", basic)]),
        (messages.clone(), vec![("Authorization", &admin)]),
        (format!("{messages}?token={admin}"), vec![]),
    ];
    for (path, headers) in &ways {
        let (status, body) = get(path, headers).await?;
        ensure!(status == 200 && body["result"] == json!([from_alice]), "{path} {headers:?}: {status} {body}");
    }
    let unauthorized = json!({"success": false, "msg": "Unauthorized."});
    let forged = issuer.mint("bob", &app, &TokenOptions { bad_signature: true, ..TokenOptions::default() })?;
    let (shadowed, expired_query) = (format!("{messages}?token={bare}"), format!("{messages}?jwt={expired}"));
    let refused = [
        ("no token", &messages, None, 403),
        ("Basic only", &messages, Some(basic), 403),
        ("forged", &messages, Some(forged.as_str()), 403),
        ("expired", &messages, Some(expired.as_str()), 403),
        ("expired in the query", &expired_query, None, 403),
        ("a header token shadows the query", &shadowed, Some(forged.as_str()), 403),
        ("alice's token", &messages, Some(tiledesk_alice.as_str()), 401),
        ("another app's admin", &messages, Some(other_admin.as_str()), 401),
    ];
    for (what, path, authorization, expected) in refused {
        let headers: Vec<(&str, &str)> = authorization.iter().map(|a| ("Authorization", *a)).collect();
        let (status, body) = get(path, &headers).await?;
        ensure!(status == expected && body["result"].is_null(), "{what}: {status} {body}");
        ensure!(expected != 403 || body == unauthorized, "{what}: {body}");
    }

    // The lists and details chat21's clients read, for bob and for the admin.
    let read = async |path: String, token: &str| {
        let (status, body) = get(&path, &[("Authorization", token)]).await?;
        ensure!(status == 200 && body["success"] == true, "{path}: {status} {body}");
        anyhow::Ok(body["result"].clone())
    };
    eventually(WAIT, "carol's conversation archived in the store", || async {
        let archived = read(format!("/api/{app}/bob/conversations/archived"), &bare).await?;
        ensure!(archived.as_array().is_some_and(|a| !a.is_empty()), "{archived}");
        Ok(())
    })
    .await?;
    for token in [&bare, &admin] {
        let live = read(format!("/api/{app}/bob/conversations"), token).await?;
        ensure!(live.as_array().map(Vec::len) == Some(1) && live[0]["conversWith"] == "alice", "{live}");
        ensure!(live[0]["archived"] == false && live[0]["last_message_text"] == "hi bob", "{live}");
        let archived = read(format!("/api/{app}/bob/conversations/archived"), token).await?;
        ensure!(archived.as_array().map(Vec::len) == Some(1), "{archived}");
        ensure!(archived[0]["conversWith"] == "carol" && archived[0]["archived"] == true, "{archived}");
        ensure!(archived[0]["text"] == "hi from carol" && archived[0]["sender"] == "carol", "{archived}");
        let also_archived = read(format!("/api/{app}/bob/archived_conversations"), token).await?;
        ensure!(also_archived == archived, "{also_archived} != {archived}");
        let details = [
            ("conversations/alice", json!([live[0]])),
            ("conversations/carol", json!([])),
            ("conversations/nobody", json!([])),
            ("archived_conversations/carol", json!([archived[0]])),
            ("archived_conversations/alice", json!([])),
        ];
        for (rest, expected) in details {
            let found = read(format!("/api/{app}/bob/{rest}"), token).await?;
            ensure!(found == expected, "{rest}: {found}, expected {expected}");
        }
    }
    for path in [format!("/api/{app}/bob/conversations/archived"), format!("/api/{app}/bob/conversations/alice")] {
        let (status, _) = get(&path, &[("Authorization", &tiledesk_alice)]).await?;
        ensure!(status == 401, "alice reads bob's {path}: {status}");
    }
    let group_path = format!("/api/{app}/groups/group-td");
    eventually(WAIT, "the admin reads any group", || async {
        let found = read(group_path.clone(), &admin).await?;
        ensure!(found == group, "{found}");
        Ok(())
    })
    .await?;
    let (status, _) = get(&group_path, &[("Authorization", &bare)]).await?;
    ensure!(status == 404, "bob is no member: {status}");

    // CORS: the preflight is answered before any token check; unknown API routes carry it too.
    let preflight = call(
        "OPTIONS",
        &format!("/api/{app}/bob/conversations/alice/messages"),
        &[
            ("Origin", "https://widget.example"),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "authorization,x-custom"),
        ],
    )
    .await?;
    ensure!(preflight.status == 204, "{preflight:?}");
    ensure!(preflight.header("access-control-allow-headers") == Some("authorization,x-custom"), "{preflight:?}");
    let methods = preflight.header("access-control-allow-methods").unwrap_or_default();
    ensure!(methods.split(',').any(|m| m == "GET"), "{preflight:?}");
    let unknown = call("GET", &format!("/api/{app}/bob/no/such/route"), &[("Authorization", &bare)]).await?;
    ensure!(unknown.status == 404, "{unknown:?}");
    let health = http_request(address, "GET", "/healthz", &[]).await?;
    ensure!(health.status == 200 && health.header("access-control-allow-origin").is_none(), "{health:?}");
    chat.daemon.stop().await
}

/// PostgreSQL connections killed again and again under load: every message ends up in both
/// histories exactly once (the writer retries; upserts make a replayed batch harmless).
#[tokio::test]
async fn postgres_connections_killed_mid_load_lose_and_duplicate_nothing() -> Result<()> {
    const MESSAGES: usize = 300;
    let db = TestDb::postgres().await?;
    let chat = chat_on(&db).await?;
    let alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let admin = PgConnectOptions::from_str(db.admin_url().context("a PostgreSQL test database")?)?;
    let name = db.postgres_name().context("a PostgreSQL test database")?.to_owned();
    let stop = tokio_util::sync::CancellationToken::new();
    let killer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut conn = admin.connect().await?;
            let mut killed = 0_usize;
            while !stop.is_cancelled() {
                let rows: Vec<(bool,)> = sqlx::query_as(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                )
                .bind(&name)
                .fetch_all(&mut conn)
                .await?;
                killed += rows.iter().filter(|(done,)| *done).count();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(killed)
        })
    };
    for i in 0..MESSAGES {
        alice
            .publish_json(&alice.outgoing_topic("bob"), &json!({"text": format!("m{i}"), "timestamp": 1000 + i}))
            .await?;
    }
    let received = bob.recv_n(MESSAGES, Duration::from_secs(60)).await?;
    stop.cancel();
    let killed = killer.await??;
    ensure!(killed > 0, "no connection was killed");
    let store = open(&db).await?;
    let app = chat.app.clone();
    let expected: Vec<String> = (0..MESSAGES).rev().map(|i| format!("m{i}")).collect();
    for (user, conversation) in [("alice", "bob"), ("bob", "alice")] {
        eventually(WAIT, &format!("{user}'s history after the kills"), || async {
            let stored = store.messages(&app, user, conversation, None, 1000).await?;
            let texts: Vec<String> = stored.iter().map(|m| m["text"].as_str().unwrap_or("").to_owned()).collect();
            ensure!(texts == expected, "{} rows, expected {MESSAGES} distinct in order", texts.len());
            Ok(())
        })
        .await?;
    }
    ensure!(received.len() == MESSAGES, "bob received {}", received.len());
    store.close().await;
    chat.daemon.stop().await
}

/// PostgreSQL refuses every connection for a while: no delivery is acked (and with durable ids,
/// the default, no copy is published: each waits for its intent's commit); stopped in the
/// outage, inboxd leaves them all in the broker, and a new inboxd delivers and stores each one
/// once the database is back.
#[tokio::test]
async fn postgres_outage_stops_acks_and_nothing_is_lost() -> Result<()> {
    const MESSAGES: usize = 20;
    const SHUTDOWN_TIMEOUT: (&str, &str) = ("INBOXD_PIPELINE_SHUTDOWN_TIMEOUT_MS", "1000");
    let db = TestDb::postgres().await?;
    let chat = Chat::builder().store(&db).env(SHUTDOWN_TIMEOUT.0, SHUTDOWN_TIMEOUT.1).start().await?;
    let alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let mut admin =
        PgConnectOptions::from_str(db.admin_url().context("a PostgreSQL test database")?)?.connect().await?;
    let name = db.postgres_name().context("a PostgreSQL test database")?.to_owned();
    let set_open = async |admin: &mut sqlx::PgConnection, open: bool| {
        sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {open}")).execute(&mut *admin).await?;
        if !open {
            sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
                .bind(&name)
                .execute(&mut *admin)
                .await?;
        }
        anyhow::Ok(())
    };
    set_open(&mut admin, false).await?;
    for i in 0..MESSAGES {
        alice
            .publish_json(&alice.outgoing_topic("bob"), &json!({"text": format!("m{i}"), "timestamp": 1000 + i}))
            .await?;
    }
    let Chat { node, app, daemon, .. } = chat;
    daemon.stop().await?;
    let observer = Observer::connect(node).await?;
    let queue = format!("inboxd.{app}");
    // The broker requeues the unacked deliveries once it has seen the connection close.
    eventually(WAIT, "every delivery waits in the broker", || async {
        let waiting = observer.queue_len(&queue).await?;
        ensure!(waiting as usize == MESSAGES, "{waiting} of {MESSAGES} deliveries wait in the broker");
        Ok(())
    })
    .await?;

    set_open(&mut admin, true).await?;
    let mut env = inboxd_e2e::daemon::env_for(node, &app);
    env.insert("INBOXD_STORE_URL".into(), db.url().to_owned());
    env.insert(SHUTDOWN_TIMEOUT.0.into(), SHUTDOWN_TIMEOUT.1.into());
    let daemon = inboxd_e2e::daemon::InProcess::start(node, env).await?;
    let received = bob.recv_n(MESSAGES, WAIT).await?;
    let texts: Vec<Value> = received.iter().map(|m| m.json().map(|j| j["text"].clone())).collect::<Result<_>>()?;
    ensure!(texts == (0..MESSAGES).map(|i| json!(format!("m{i}"))).collect::<Vec<_>>(), "bob got {texts:?}");
    let store = open(&db).await?;
    let expected: Vec<String> = (0..MESSAGES).rev().map(|i| format!("m{i}")).collect();
    eventually(WAIT, "bob's history after the outage", || async {
        let stored = store.messages(&app, "bob", "alice", None, 100).await?;
        let texts: Vec<String> = stored.iter().map(|m| m["text"].as_str().unwrap_or("").to_owned()).collect();
        ensure!(texts == expected, "{texts:?}");
        Ok(())
    })
    .await?;
    store.close().await;
    daemon.stop().await
}
