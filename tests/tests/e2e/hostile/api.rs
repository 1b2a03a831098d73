//! Hostile input against the HTTP listener: history tokens, page caps, request limits, and
//! webhook endpoint tokens kept out of what the operator sees. Real broker, daemon and TCP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use inboxd::webhook::endpoint::redact;
use inboxd_e2e::MqttUser;
use inboxd_e2e::amqp::Observer;
use inboxd_e2e::daemon::{cli, free_address, http_get, http_get_with, http_request};
use inboxd_e2e::db::TestDb;
use inboxd_e2e::eventually;
use inboxd_e2e::jwt::TokenOptions;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{Chat, ChatBuilder, WAIT, call_json, expect_on};

/// The history API's page cap (chat21-http-server's too).
const MAX_PAGE: usize = 200;

/// A chat whose inboxd keeps history in its own SQLite file and serves the history API on a
/// free loopback port, with `configure`'s extra settings.
struct ApiChat {
    chat: Chat,
    address: SocketAddr,
    _db: TestDb,
}

impl ApiChat {
    async fn start(configure: impl FnOnce(ChatBuilder) -> ChatBuilder) -> Result<ApiChat> {
        let db = TestDb::sqlite()?;
        let address = free_address()?;
        let chat = Chat::builder().store(&db).api(address);
        let chat = configure(chat).start().await?;
        Ok(ApiChat { chat, address, _db: db })
    }

    /// `GET path` with `Authorization: JWT <token>`: the status and the JSON answer.
    async fn get(&self, path: &str, token: &str) -> Result<(u16, Value)> {
        let header = format!("JWT {token}");
        let (status, body) = http_get_with(self.address, path, &[("Authorization", &header)]).await?;
        let body = serde_json::from_str(&body).with_context(|| format!("{path}: {status} {body}"))?;
        Ok((status, body))
    }

    /// `user`'s messages with `peer` through the API, `query` appended.
    fn messages_path(&self, user: &str, peer: &str, query: &str) -> String {
        format!("/api/{}/{user}/conversations/{peer}/messages{query}", self.chat.app)
    }

    /// Asserts the daemon is ready and that `from` still reaches `to` (the next good message).
    async fn still_serving(&self, from: &MqttUser, to: &mut MqttUser, text: &str) -> Result<Value> {
        self.chat.assert_ready().await?;
        from.publish_json(&from.outgoing_topic(to.user()), &json!({"text": text})).await?;
        let topic = self.chat.topic(&format!("users/{}/messages/{}/clientadded", to.user(), from.user()));
        let copy = expect_on(to, &topic).await?;
        ensure!(copy["text"] == text, "{copy}");
        Ok(copy)
    }
}

fn now_secs() -> Result<i64> {
    Ok(i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())?)
}

/// Tokens without `aud`, `exp` or `sub`, or not valid yet (`nbf`), are refused as chat21 refuses
/// (403 `Unauthorized.`), tokens for another app with 401; a proper token reads the history,
/// and the daemon keeps routing.
#[tokio::test]
async fn history_tokens_must_carry_aud_exp_sub_be_valid_now_and_for_this_app() -> Result<()> {
    let api = ApiChat::start(|chat| chat).await?;
    let chat = &api.chat;
    let alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let carol = chat.user("carol").await?;
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "for bob only"})).await?;
    let received = expect_on(&mut bob, &chat.topic("users/bob/messages/alice/clientadded")).await?;

    let issuer = chat.node.issuer();
    let path = api.messages_path("bob", "alice", "");
    let proper = issuer.mint("bob", &chat.app, &TokenOptions::default())?;
    eventually(WAIT, "bob's history with a proper token", || async {
        let (status, body) = api.get(&path, &proper).await?;
        ensure!(status == 200 && body["result"] == json!([received]), "{status}: {body}");
        Ok(())
    })
    .await?;

    let claims = issuer.claims("bob", &chat.app)?;
    let without = |claim: &str| {
        let mut c = claims.clone();
        c.remove(claim);
        issuer.sign(&c)
    };
    let mut not_yet = claims.clone();
    not_yet.insert("nbf".into(), json!(now_secs()? + 600));
    let mut other_app_id = claims.clone();
    other_app_id.insert("app_id".into(), json!("another-app"));
    // chat21's answers: 403 `Unauthorized.` without a valid token (the reason is logged), 401
    // for a valid token that may not read this.
    let unauthorized = json!({"success": false, "msg": "Unauthorized."});
    let denied = json!({"success": false, "err": "Permission denied"});
    let refused = [
        ("no aud", without("aud")?, 403, &unauthorized),
        ("no exp", without("exp")?, 403, &unauthorized),
        ("no sub", without("sub")?, 403, &unauthorized),
        ("nbf in the future", issuer.sign(&not_yet)?, 403, &unauthorized),
        ("app_id of another app", issuer.sign(&other_app_id)?, 401, &denied),
        ("minted for another app", issuer.mint("bob", "another-app", &TokenOptions::default())?, 401, &denied),
    ];
    for (what, token, expected, answer) in &refused {
        let (status, body) = api.get(&path, token).await?;
        ensure!(status == *expected && body == **answer, "{what}: {status} {body}");
    }
    // Without `app_id`, the scope on the user's own inbox names the app.
    let (status, body) = api.get(&path, &without("app_id")?).await?;
    ensure!(status == 200 && body["result"] == json!([received]), "scope-named app: {status} {body}");

    let next = api.still_serving(&carol, &mut bob, "still routing").await?;
    let carols = api.messages_path("bob", "carol", "");
    eventually(WAIT, "the next message in bob's history", || async {
        let (status, body) = api.get(&carols, &proper).await?;
        ensure!(status == 200 && body["result"] == json!([next]), "{status}: {body}");
        Ok(())
    })
    .await?;
    api.chat.daemon.stop().await
}

/// Junk where chat21's clients put their token (a huge JWT-shaped header, non-ASCII, `Basic`
/// with junk in the query, a repeated query token, a preflight asking for a huge header list):
/// each is answered, with CORS, without a valid token's data; the daemon keeps routing.
#[tokio::test]
async fn junk_tokens_in_headers_and_queries_are_refused_with_cors() -> Result<()> {
    let api = ApiChat::start(|chat| chat).await?;
    let chat = &api.chat;
    let alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let copy = api.still_serving(&alice, &mut bob, "before the junk").await?;
    let path = api.messages_path("bob", "alice", "");
    let token = chat.node.issuer().mint("bob", &chat.app, &TokenOptions::default())?;
    eventually(WAIT, "bob's history", || async {
        let (status, body) = api.get(&path, &token).await?;
        ensure!(status == 200 && body["result"] == json!([copy]), "{status}: {body}");
        Ok(())
    })
    .await?;
    let huge = format!("{0}.{0}.{0}", "a".repeat(20_000));
    let many_headers = vec!["x-h"; 5_000].join(",");
    let junk = [
        ("a 60 kB JWT-shaped header", "GET", path.clone(), vec![("Authorization", huge.as_str())]),
        ("a 60 kB JWT-shaped query token", "GET", format!("{path}?token={huge}"), vec![]),
        ("non-ASCII", "GET", path.clone(), vec![("Authorization", "JWT \u{e9}t\u{e9}.\u{e9}.\u{e9}")]),
        ("Basic and a junk query", "GET", format!("{path}?jwt=%00%ff"), vec![("Authorization", "Basic Ym9i")]),
        ("a repeated query token", "GET", format!("{path}?token={token}&token={token}"), vec![]),
        ("a negative before", "GET", format!("{path}?before=-9223372036854775808&token=x"), vec![]),
        (
            "a preflight asking for 5000 headers",
            "OPTIONS",
            path.clone(),
            vec![("Access-Control-Request-Headers", many_headers.as_str())],
        ),
    ];
    for (what, method, target, headers) in &junk {
        let answer = http_request(api.address, method, target, headers).await.with_context(|| what.to_string())?;
        ensure!(answer.header("access-control-allow-origin") == Some("*"), "{what}: no CORS: {answer:?}");
        ensure!([204, 400, 403, 431].contains(&answer.status), "{what}: {answer:?}");
        ensure!(!answer.body.contains("before the junk"), "{what}: {answer:?}");
    }
    api.still_serving(&alice, &mut bob, "after the junk").await?;
    api.chat.daemon.stop().await
}

/// `limit` above the cap is clamped: a page holds at most 200 messages however many exist, and
/// holds 200 without one, as chat21's.
#[tokio::test]
async fn history_pages_hold_at_most_200_messages() -> Result<()> {
    const SENT: usize = MAX_PAGE + 5;
    let api = ApiChat::start(|chat| chat).await?;
    let chat = &api.chat;
    let alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    for i in 0..SENT {
        alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": format!("m{i}")})).await?;
    }
    bob.recv_n(SENT, Duration::from_secs(60)).await?;
    let token = chat.node.issuer().mint("bob", &chat.app, &TokenOptions::default())?;
    // Every message is stored (the oldest page of one shows it), yet a page holds 200.
    let page_of = async |query: &str| {
        let (status, body) = api.get(&api.messages_path("bob", "alice", query), &token).await?;
        ensure!(status == 200, "{query}: {status} {body}");
        let texts: Vec<String> = body["result"]
            .as_array()
            .context("a list")?
            .iter()
            .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
            .collect();
        anyhow::Ok(texts)
    };
    eventually(WAIT, "all of alice's messages in bob's history", || async {
        let newest = page_of("?limit=1").await?;
        ensure!(newest == [format!("m{}", SENT - 1)], "{newest:?}");
        Ok(())
    })
    .await?;
    for query in ["?limit=100000", "?limit=201", "?limit=9223372036854775807"] {
        let page = page_of(query).await?;
        ensure!(page.len() == MAX_PAGE, "{query}: {} messages", page.len());
        ensure!(page[0] == format!("m{}", SENT - 1), "{query}: newest first: {:?}", &page[..3]);
    }
    ensure!(page_of("").await?.len() == MAX_PAGE, "the default page is chat21's 200");
    ensure!(page_of("?limit=-5").await?.len() == 1, "a page holds at least one");
    let carol = chat.user("carol").await?;
    api.still_serving(&carol, &mut bob, "after the big pages").await?;
    api.chat.daemon.stop().await
}

/// Reads what `stream` gets until the server closes it, within `WAIT`; a reset counts as closed.
async fn until_closed(stream: &mut TcpStream) -> Result<Vec<u8>> {
    let mut answer = Vec::new();
    match tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await {
        Err(_) => anyhow::bail!("the connection is still open after {WAIT:?}"),
        Ok(Ok(_)) => Ok(answer),
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionReset => Ok(answer),
        Ok(Err(err)) => Err(err.into()),
    }
}

/// A client that sends half a request head, and one that sends nothing, are disconnected
/// after `http.header_read_timeout_ms`; meanwhile the others are served and messages flow.
#[tokio::test]
async fn slow_clients_are_cut_off_after_the_header_timeout_while_others_are_served() -> Result<()> {
    let api = ApiChat::start(|chat| chat.env("INBOXD_HTTP_HEADER_READ_TIMEOUT_MS", "500")).await?;
    let chat = &api.chat;
    let mut half = TcpStream::connect(api.address).await?;
    half.write_all(b"GET /readyz HTTP/1.1\r\nHost: inboxd\r\nX-Slow: ").await?;
    let mut silent = TcpStream::connect(api.address).await?;

    let alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let copy = api.still_serving(&alice, &mut bob, "while two clients dawdle").await?;
    let token = chat.node.issuer().mint("bob", &chat.app, &TokenOptions::default())?;
    let path = api.messages_path("bob", "alice", "");
    eventually(WAIT, "the history API while two clients dawdle", || async {
        let (status, body) = api.get(&path, &token).await?;
        ensure!(status == 200 && body["result"] == json!([copy]), "{status}: {body}");
        Ok(())
    })
    .await?;

    for (what, stream) in [("half a head", &mut half), ("nothing", &mut silent)] {
        let answer = until_closed(stream).await.with_context(|| format!("the client that sent {what}"))?;
        ensure!(answer.is_empty(), "{what}: answered {:?}", String::from_utf8_lossy(&answer));
    }
    api.still_serving(&alice, &mut bob, "after they were cut off").await?;
    api.chat.daemon.stop().await
}

/// Beyond `http.max_connections`, a client waits until a connection closes, then is served.
#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() -> Result<()> {
    let api = ApiChat::start(|chat| {
        chat.env("INBOXD_HTTP_MAX_CONNECTIONS", "1").env("INBOXD_HTTP_HEADER_READ_TIMEOUT_MS", "60000")
    })
    .await?;
    let mut holder = TcpStream::connect(api.address).await?;
    holder.write_all(b"GET /healthz HTTP/1.0\r\nHost: inboxd\r\n").await?;
    let address = api.address;
    let mut waiting = tokio::spawn(async move { http_get(address, "/readyz").await });
    // The only slot is taken by a client still sending its head: the second one is not served,
    // not even after a message went through the daemon meanwhile.
    let chat = &api.chat;
    let alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "while a client waits"})).await?;
    expect_on(&mut bob, &chat.topic("users/bob/messages/alice/clientadded")).await?;
    ensure!(!waiting.is_finished(), "served beyond http.max_connections = 1: {:?}", (&mut waiting).await);
    holder.write_all(b"\r\n").await?;
    let answer = until_closed(&mut holder).await?;
    ensure!(answer.starts_with(b"HTTP/1.0 200"), "{:?}", String::from_utf8_lossy(&answer));
    let (status, body) = tokio::time::timeout(WAIT, waiting).await.context("still waiting")???;
    ensure!(status == 200, "the waiting client: {status} {body}");
    api.still_serving(&alice, &mut bob, "with one HTTP slot").await?;
    api.chat.daemon.stop().await
}

/// A webhook endpoint's path (a token in real deployments) never shows in `inboxd webhooks dead`:
/// scheme, host and port do, with a fingerprint in place of the path.
#[tokio::test]
async fn webhook_dead_letters_do_not_show_the_endpoint_path() -> Result<()> {
    const TOKEN: &str = "tok-8c1f0e9d2b7a4c3e";
    // A port nobody listens on: every attempt is refused.
    let closed = free_address()?;
    let endpoint = format!("http://{closed}/chat21/hooks/{TOKEN}");
    let db = TestDb::sqlite()?;
    let chat = Chat::builder()
        .store(&db)
        .env("INBOXD_WEBHOOK_ENABLED", "true")
        .env("INBOXD_WEBHOOK_ENDPOINTS", endpoint.clone())
        .env("INBOXD_WEBHOOK_EVENTS", "message-delivered")
        .env("INBOXD_WEBHOOK_MAX_ATTEMPTS", "1")
        .start()
        .await?;
    let alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    for text in ["one", "two"] {
        alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": text})).await?;
        expect_on(&mut bob, &chat.topic("users/bob/messages/alice/clientadded")).await?;
    }
    let env = HashMap::from([
        ("INBOXD_STORE_URL".to_owned(), db.url().to_owned()),
        ("INBOXD_APP_ID".to_owned(), chat.app.clone()),
    ]);
    let shown = redact(&endpoint);
    ensure!(shown.starts_with(&format!("http://{closed}/")) && !shown.contains(TOKEN), "{shown}");
    eventually(WAIT, "both events in the dead letters", || async {
        let out = cli(&["webhooks", "dead"], &env).await?;
        ensure!(out.status.success(), "webhooks dead: {}", String::from_utf8_lossy(&out.stderr));
        let (stdout, stderr) = (String::from_utf8(out.stdout)?, String::from_utf8_lossy(&out.stderr).into_owned());
        ensure!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN), "the path token is shown: {stdout}{stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        ensure!(lines.len() == 2 && lines.iter().all(|l| l.contains(&shown)), "{lines:#?}");
        Ok(())
    })
    .await?;
    let carol = chat.user("carol").await?;
    carol.publish_json(&carol.outgoing_topic("bob"), &json!({"text": "next"})).await?;
    expect_on(&mut bob, &chat.topic("users/bob/messages/carol/clientadded")).await?;
    chat.daemon.stop().await
}

/// A group has at most `routing.max_inline_members` members however it is made, so no user can
/// build a fan-out list through the API: a create, a set-members and a join over the cap are
/// refused with chat21's error JSON and change nothing, and a `groups.update` over it is
/// dead-lettered (`too-many-members`) and told to nobody. The daemon stays ready and routes.
#[tokio::test]
async fn groups_over_the_member_cap_are_refused_by_the_api_and_dead_lettered_on_update() -> Result<()> {
    const CAP: usize = 5;
    let api = ApiChat::start(|chat| chat.env("INBOXD_ROUTING_MAX_INLINE_MEMBERS", CAP.to_string())).await?;
    let (chat, address) = (&api.chat, api.address);
    let app = chat.app.clone();
    let mut bob = chat.user("bob").await?;
    let carol = chat.user("carol").await?;
    let token = chat.node.issuer().mint("alice", &app, &TokenOptions::default())?;
    let ids = |n: usize| -> serde_json::Map<String, Value> { (0..n).map(|i| (format!("m{i}"), json!(1))).collect() };
    let too_many = |count: usize| json!({"success": false, "err": format!("Too many members: {count}, at most {CAP}")});
    let group_path = |id: &str| format!("/api/{app}/groups/{id}");

    // alice joins every group she creates: CAP ids from her make CAP + 1 members.
    let big = json!({"group_name": "big", "group_id": "group-big", "group_members": ids(CAP)});
    let (status, answer) = call_json(address, "POST", &format!("/api/{app}/groups"), &token, &big).await?;
    ensure!(status == 405 && answer == too_many(CAP + 1), "create over the cap: {status} {answer}");
    let (status, answer) = api.get(&group_path("group-big"), &token).await?;
    ensure!(status == 404, "the refused group was stored: {status} {answer}");

    let small = json!({"group_name": "small", "group_id": "group-small", "group_members": ids(CAP - 2)});
    let (status, answer) = call_json(address, "POST", &format!("/api/{app}/groups"), &token, &small).await?;
    ensure!(status == 201, "create within the cap: {status} {answer}");
    let members = group_path("group-small") + "/members";
    let (status, answer) = call_json(address, "PUT", &members, &token, &json!({"members": ids(CAP + 1)})).await?;
    ensure!(status == 405 && answer == too_many(CAP + 1), "set members over the cap: {status} {answer}");
    let (status, answer) = call_json(address, "POST", &members, &token, &json!({"member_id": "last"})).await?;
    ensure!(status == 200, "the join that fills the group: {status} {answer}");
    let (status, answer) = call_json(address, "POST", &members, &token, &json!({"member_id": "one-more"})).await?;
    ensure!(status == 405 && answer == too_many(CAP + 1), "a join over the cap: {status} {answer}");
    let (status, answer) = api.get(&group_path("group-small"), &token).await?;
    let stored = answer["result"]["members"].as_object().map(|m| m.keys().cloned().collect::<Vec<_>>());
    ensure!(status == 200 && stored.as_ref().map(Vec::len) == Some(CAP), "the stored group: {status} {answer}");

    // The server side's `groups.update` over the cap: refused before any member is read.
    let observer = Observer::connect(chat.node).await?;
    let update = json!({"group": {"uid": "group-update", "members": ids(CAP + 1)}, "notify_to": {"bob": 1}});
    observer.publish_json(&format!("apps.observer.{app}.groups.update"), &update).await?;
    let dead = observer.get_within(&format!("inboxd.{app}.dead"), WAIT).await?.context("no dead letter")?;
    ensure!(
        dead.header("x-inboxd-reason").as_deref() == Some("too-many-members"),
        "{:?}",
        dead.header("x-inboxd-error")
    );
    // bob was to be told of it; the next thing he gets is carol's message.
    api.still_serving(&carol, &mut bob, "after the big groups").await?;
    api.chat.daemon.stop().await
}
