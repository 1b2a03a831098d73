//! Webhooks end to end, on SQLite and on PostgreSQL: local HTTP receivers get chat21's events
//! signed and once each, a flaky one after retries, a silent one ends in the dead letters,
//! from which the operator replays them; a Tiledesk-shaped configuration (chat21-server's block of
//! Tiledesk's compose, an https endpoint with a private CA, a receiver answering 400 to what it
//! ignores) starts and each endpoint gets each event once.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, ensure};
use hmac::{Hmac, Mac};
use inboxd::webhook::endpoint::redact;
use inboxd_e2e::daemon::cli;
use inboxd_e2e::db::TestDb;
use inboxd_e2e::{MqttUser, eventually};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::util::{Chat, WAIT, expect_on};

const SECRET: &str = "webhook-test-secret";
/// Attempts a flaky receiver refuses before it answers 200.
const FLAKY_FAILURES: usize = 3;

/// How a receiver answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Ok,
    /// 500 to the first attempts of each event, then 200.
    Flaky,
    /// Reads the request and never answers (until told to answer).
    Silent,
    /// 400 to `message-sent` (as Tiledesk answers events it ignores), 200 to the rest.
    Picky,
}

/// One event a receiver accepted (answered 200).
#[derive(Clone, Debug)]
struct Hit {
    event: String,
    delivery: String,
    signature: String,
    body: Vec<u8>,
}

/// A small local HTTP server standing in for a webhook endpoint.
struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    attempts: Arc<Mutex<HashMap<String, usize>>>,
    answer: Arc<AtomicBool>,
}

impl Receiver {
    async fn start(behaviour: Behaviour) -> Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let receiver = Receiver {
            url: format!("http://{}/hook", listener.local_addr()?),
            hits: Arc::default(),
            attempts: Arc::default(),
            answer: Arc::new(AtomicBool::new(behaviour != Behaviour::Silent)),
        };
        let (hits, attempts, answer) = (receiver.hits.clone(), receiver.attempts.clone(), receiver.answer.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (hits, attempts, answer) = (hits.clone(), attempts.clone(), answer.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, behaviour, &hits, &attempts, &answer).await;
                });
            }
        });
        Ok(receiver)
    }

    /// An `https://localhost` receiver whose certificate is signed by `fixtures/tls/ca.pem`.
    async fn start_tls(behaviour: Behaviour) -> Result<Receiver> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(tls_fixture("localhost.pem"))?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(tls_fixture("localhost.key"))?;
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let receiver = Receiver {
            url: format!("https://localhost:{}/hook", listener.local_addr()?.port()),
            hits: Arc::default(),
            attempts: Arc::default(),
            answer: Arc::new(AtomicBool::new(true)),
        };
        let (hits, attempts, answer) = (receiver.hits.clone(), receiver.attempts.clone(), receiver.answer.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (hits, attempts, answer, acceptor) =
                    (hits.clone(), attempts.clone(), answer.clone(), acceptor.clone());
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = serve(stream, behaviour, &hits, &attempts, &answer).await;
                    }
                });
            }
        });
        Ok(receiver)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().expect("not poisoned").clone()
    }
}

fn tls_fixture(name: &str) -> String {
    format!("{}/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

async fn serve(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    behaviour: Behaviour,
    hits: &Mutex<Vec<Hit>>,
    attempts: &Mutex<HashMap<String, usize>>,
    answer: &AtomicBool,
) -> Result<()> {
    let mut data = Vec::new();
    let head_end = loop {
        let mut chunk = [0_u8; 4096];
        let n = stream.read(&mut chunk).await?;
        ensure!(n > 0, "closed before the request ended");
        data.extend_from_slice(&chunk[..n]);
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_lowercase();
    let header = |name: &str| {
        head.lines().find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_owned())).unwrap_or_default()
    };
    let length: usize = header("content-length").parse().context("content-length")?;
    while data.len() < head_end + length {
        let mut chunk = [0_u8; 4096];
        let n = stream.read(&mut chunk).await?;
        ensure!(n > 0, "closed before the body ended");
        data.extend_from_slice(&chunk[..n]);
    }
    let hit = Hit {
        event: header("x-inboxd-event"),
        delivery: header("x-inboxd-delivery"),
        signature: header("x-inboxd-signature"),
        body: data[head_end..head_end + length].to_vec(),
    };
    let attempt = {
        let mut attempts = attempts.lock().expect("not poisoned");
        let count = attempts.entry(format!("{} {}", hit.event, hit.delivery)).or_default();
        *count += 1;
        *count
    };
    let status = match behaviour {
        Behaviour::Silent if !answer.load(Ordering::SeqCst) => {
            // Hold the connection open, never answering; the daemon's timeout gives up on it.
            std::future::pending::<()>().await;
            unreachable!("pending never completes")
        }
        Behaviour::Flaky if attempt <= FLAKY_FAILURES => "500 Internal Server Error",
        Behaviour::Picky if hit.event == "message-sent" => "400 Bad Request",
        _ => "200 OK",
    };
    if status.starts_with("200") {
        hits.lock().expect("not poisoned").push(hit);
    }
    let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

fn signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The events of `hits` by type; checks every signature on the way.
fn events(hits: &[Hit]) -> Result<Vec<(String, Value)>> {
    hits.iter()
        .map(|hit| {
            ensure!(hit.signature == signature(&hit.body), "bad signature {:?}", hit.signature);
            let body: Value = serde_json::from_slice(&hit.body)?;
            Ok((body["event_type"].as_str().unwrap_or_default().to_owned(), body))
        })
        .collect()
}

const ALL_EVENTS: [&str; 5] =
    ["conversation-archived", "message-delivered", "message-return-receipt", "message-sent", "presence-change"];

async fn webhooks_on(db: TestDb) -> Result<()> {
    let ok = Receiver::start(Behaviour::Ok).await?;
    let flaky = Receiver::start(Behaviour::Flaky).await?;
    let silent = Receiver::start(Behaviour::Silent).await?;
    let endpoints = [&ok.url, &flaky.url, &silent.url].map(String::as_str).join(",");
    let chat = Chat::builder()
        .store(&db)
        // chat21-server's own variables.
        .env("WEBHOOK_ENABLED", "true")
        .env("WEBHOOK_ENDPOINTS", endpoints)
        .env("PRESENCE_ENABLED", "true")
        .env("INBOXD_WEBHOOK_SECRET", SECRET)
        .env("INBOXD_WEBHOOK_MAX_ATTEMPTS", (FLAKY_FAILURES + 1).to_string())
        .env("INBOXD_WEBHOOK_TIMEOUT_MS", "300")
        .env("INBOXD_WEBHOOK_RETRY_INITIAL_MS", "50")
        .env("INBOXD_WEBHOOK_RETRY_MAX_MS", "200")
        .start()
        .await?;
    let mut alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let copy = exchange(&chat, &mut alice, &mut bob, "hook me").await?;
    let id = copy["message_id"].as_str().context("message id")?;
    alice.publish_json(&chat.topic("users/alice/presence/c1"), &json!({"connected": true})).await?;

    let cli_env = HashMap::from([
        ("INBOXD_STORE_URL".to_owned(), db.url().to_owned()),
        ("INBOXD_APP_ID".to_owned(), chat.app.clone()),
    ]);
    let dead = async |env: &HashMap<String, String>| {
        let out = cli(&["webhooks", "dead"], env).await?;
        ensure!(out.status.success(), "webhooks dead: {}", String::from_utf8_lossy(&out.stderr));
        anyhow::Ok(String::from_utf8(out.stdout)?.lines().map(str::to_owned).collect::<Vec<_>>())
    };
    eventually(WAIT, &format!("{}: the silent endpoint's events in the dead letters", db.kind()), || async {
        let lines = dead(&cli_env).await?;
        // The endpoint shows as scheme, host and port only: its path may carry a token.
        let shown = redact(&silent.url);
        ensure!(lines.len() == 5 && lines.iter().all(|l| l.contains(&shown) && !l.contains("/hook")), "{lines:#?}");
        Ok(())
    })
    .await?;
    eventually(WAIT, "the flaky endpoint got every event", || async {
        ensure!(flaky.hits().len() == 5, "{} of 5", flaky.hits().len());
        Ok(())
    })
    .await?;
    let attempts = flaky.attempts.lock().expect("not poisoned").clone();
    ensure!(attempts.len() == 5 && attempts.values().all(|n| *n == FLAKY_FAILURES + 1), "flaky: {attempts:?}");
    // Everything has settled: the healthy endpoint got each event exactly once, signed.
    let received = events(&ok.hits())?;
    let types: BTreeSet<&str> = received.iter().map(|(t, _)| t.as_str()).collect();
    ensure!(received.len() == 5 && types == BTreeSet::from(ALL_EVENTS), "{received:#?}");
    let by_type: HashMap<&str, &Value> = received.iter().map(|(t, b)| (t.as_str(), b)).collect();
    let delivered = by_type["message-delivered"];
    ensure!(delivered["delivered_to"] == "bob" && delivered["message_id"] == id, "{delivered}");
    ensure!(delivered["data"]["text"] == "hook me" && delivered["app_id"] == chat.app.as_str(), "{delivered}");
    ensure!(by_type["message-return-receipt"]["data"]["status"] == 250, "{received:#?}");
    ensure!(by_type["conversation-archived"]["user_id"] == "bob", "{received:#?}");
    let presence = by_type["presence-change"];
    ensure!(presence["presence"] == "online" && presence["user_id"] == "alice", "{presence}");
    events(&flaky.hits())?;

    // The operator replays the dead letters once the endpoint answers again.
    silent.answer.store(true, Ordering::SeqCst);
    let out = cli(&["webhooks", "replay", "--all"], &cli_env).await?;
    ensure!(String::from_utf8_lossy(&out.stdout).trim() == "replayed 5", "{out:?}");
    eventually(WAIT, "the replayed events arrive", || async {
        ensure!(silent.hits().len() == 5, "{} of 5", silent.hits().len());
        ensure!(dead(&cli_env).await?.is_empty(), "dead letters left");
        Ok(())
    })
    .await?;
    events(&silent.hits())?;
    chat.daemon.stop().await
}

#[tokio::test]
async fn sqlite_webhooks_arrive_signed_retried_and_dead_lettered() -> Result<()> {
    webhooks_on(TestDb::sqlite()?).await
}

#[tokio::test]
async fn postgres_webhooks_arrive_signed_retried_and_dead_lettered() -> Result<()> {
    webhooks_on(TestDb::postgres().await?).await
}

/// Tiledesk's docker-compose block for chat21-server (Tiledesk/tiledesk
/// `docker-compose/docker-compose.yml`), verbatim but for the hosts: `LOG_LEVEL=info`,
/// `MONGODB_URI`, `APP_ID`, two endpoints (Tiledesk's server, here `https://` with a private CA,
/// and chat21-http-server's push webhook), `WEBHOOK_EVENTS` naming `conversation-unarchived`,
/// `RABBITMQ_URI`; `WEBHOOK_ENABLED` as `enabled` says (the compose sets `true`, older ones left it
/// unset); `PRESENCE_ENABLED` unset. Tiledesk's receiver answers 400 to `message-sent`.
async fn tiledesk_shaped(db: TestDb, enabled: Option<&str>) -> Result<()> {
    let picky = Receiver::start_tls(Behaviour::Picky).await?;
    let push = Receiver::start(Behaviour::Ok).await?;
    let mut builder = Chat::builder()
        .store(&db)
        .env("LOG_LEVEL", "info")
        .env("MONGODB_URI", "mongodb://mongo/chat21")
        .env("APP_ID", "tilechat")
        .env("WEBHOOK_ENDPOINTS", format!("{},{}", picky.url, push.url))
        .env("WEBHOOK_EVENTS", "message-sent,message-delivered,conversation-unarchived")
        // What the compose gives; the test's own broker URL (INBOXD_BROKER_URL) and app win.
        .env("RABBITMQ_URI", "amqp://ignored:token@rabbitmq:5672?heartbeat=60")
        .env("INBOXD_WEBHOOK_CA_FILE", tls_fixture("ca.pem"))
        .env("INBOXD_WEBHOOK_RETRY_INITIAL_MS", "50")
        .env("INBOXD_WEBHOOK_RETRY_MAX_MS", "50");
    if let Some(enabled) = enabled {
        builder = builder.env("WEBHOOK_ENABLED", enabled);
    }
    let chat = builder.start().await?;
    let mut alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    alice.publish_json(&chat.topic("users/alice/presence/c1"), &json!({"connected": true})).await?;
    exchange(&chat, &mut alice, &mut bob, "hi").await?;

    // message-sent and message-delivered (listed) and conversation-archived (chat21 always sends
    // it) go to both endpoints; no presence-change (PRESENCE_ENABLED unset), no receipt (not
    // listed). Tiledesk's answers 400 to message-sent: final, never retried.
    let expected = BTreeSet::from(["conversation-archived", "message-delivered", "message-sent"]);
    eventually(WAIT, "the accepted events arrive", || async {
        let types: BTreeSet<String> = picky.hits().into_iter().map(|h| h.event).collect();
        ensure!(types == BTreeSet::from(["conversation-archived".into(), "message-delivered".into()]), "{types:?}");
        ensure!(push.hits().len() == 3, "push endpoint: {:?}", push.hits());
        Ok(())
    })
    .await?;
    // Once the outbox holds nothing for the app, no event can be retried or sent late.
    let store = inboxd::store::Store::open_existing(&db.url().parse().map_err(anyhow::Error::msg)?)
        .await?
        .context("setup failed: no store")?;
    eventually(WAIT, "the outbox is empty", || async {
        let pending = store.due_webhooks(&chat.app, i64::MAX, 100).await?;
        ensure!(pending.is_empty(), "{} events still in the outbox", pending.len());
        Ok(())
    })
    .await?;
    for (name, receiver) in [("tiledesk (https)", &picky), ("push", &push)] {
        let attempts = receiver.attempts.lock().expect("not poisoned").clone();
        let tried: BTreeSet<&str> = attempts.keys().filter_map(|k| k.split(' ').next()).collect();
        ensure!(tried == expected, "{name}: {attempts:?}");
        ensure!(attempts.len() == 3 && attempts.values().all(|n| *n == 1), "{name}: each event once: {attempts:?}");
    }
    ensure!(picky.hits().len() == 2, "{:?}", picky.hits());
    let types: BTreeSet<String> = push.hits().into_iter().map(|h| h.event).collect();
    ensure!(types.iter().map(String::as_str).collect::<BTreeSet<_>>() == expected, "{types:?}");
    // The rejected event is not a dead letter.
    let cli_env = HashMap::from([
        ("INBOXD_STORE_URL".to_owned(), db.url().to_owned()),
        ("INBOXD_APP_ID".to_owned(), chat.app.clone()),
    ]);
    let out = cli(&["webhooks", "dead"], &cli_env).await?;
    ensure!(out.status.success() && out.stdout.is_empty(), "dead letters: {out:?}");
    chat.daemon.stop().await
}

#[tokio::test]
async fn sqlite_tiledesk_configuration_starts_and_a_400_is_final() -> Result<()> {
    tiledesk_shaped(TestDb::sqlite()?, Some("true")).await
}

#[tokio::test]
async fn postgres_tiledesk_configuration_starts_and_a_400_is_final() -> Result<()> {
    tiledesk_shaped(TestDb::postgres().await?, None).await
}

#[tokio::test]
async fn https_endpoints_get_events_over_tls() -> Result<()> {
    let receiver = Receiver::start_tls(Behaviour::Ok).await?;
    let db = TestDb::sqlite()?;
    let chat = Chat::builder()
        .store(&db)
        .env("WEBHOOK_ENDPOINTS", receiver.url.clone())
        .env("WEBHOOK_EVENTS", "message-delivered")
        .env("INBOXD_WEBHOOK_CA_FILE", tls_fixture("ca.pem"))
        .start()
        .await?;
    let alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "over tls"})).await?;
    expect_on(&mut bob, &chat.topic("users/bob/messages/alice/clientadded")).await?;
    eventually(WAIT, "the event arrives over TLS", || async {
        let hits = receiver.hits();
        ensure!(hits.len() == 1 && hits[0].event == "message-delivered", "{hits:?}");
        Ok(())
    })
    .await?;
    let body: Value = serde_json::from_slice(&receiver.hits()[0].body)?;
    ensure!(body["data"]["text"] == "over tls", "{body}");
    chat.daemon.stop().await
}

#[tokio::test]
async fn an_https_endpoint_with_an_untrusted_certificate_gets_nothing() -> Result<()> {
    let receiver = Receiver::start_tls(Behaviour::Ok).await?;
    let db = TestDb::sqlite()?;
    let chat = Chat::builder()
        .store(&db)
        .env("WEBHOOK_ENDPOINTS", receiver.url.clone())
        .env("WEBHOOK_EVENTS", "message-delivered")
        .env("INBOXD_WEBHOOK_MAX_ATTEMPTS", "1")
        .start()
        .await?;
    let alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "not trusted"})).await?;
    expect_on(&mut bob, &chat.topic("users/bob/messages/alice/clientadded")).await?;
    let cli_env = HashMap::from([
        ("INBOXD_STORE_URL".to_owned(), db.url().to_owned()),
        ("INBOXD_APP_ID".to_owned(), chat.app.clone()),
    ]);
    eventually(WAIT, "the event is dead-lettered for the certificate", || async {
        let out = cli(&["webhooks", "dead"], &cli_env).await?;
        let listed = String::from_utf8(out.stdout)?;
        ensure!(listed.lines().count() == 1 && listed.contains("certificate"), "{listed}");
        Ok(())
    })
    .await?;
    ensure!(receiver.hits().is_empty(), "{:?}", receiver.hits());
    chat.daemon.stop().await
}

/// alice sends bob `text`, bob reads it (a receipt) and archives the conversation, each step
/// awaited on the clients; returns bob's copy.
async fn exchange(chat: &Chat, alice: &mut MqttUser, bob: &mut MqttUser, text: &str) -> Result<Value> {
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": text})).await?;
    expect_on(alice, &chat.topic("users/alice/messages/bob/clientadded")).await?;
    let copy = expect_on(bob, &chat.topic("users/bob/messages/alice/clientadded")).await?;
    let id = copy["message_id"].as_str().context("message id")?;
    bob.publish_json(&chat.topic(&format!("users/bob/messages/alice/{id}/update")), &json!({"status": 200})).await?;
    expect_on(alice, &chat.topic(&format!("users/alice/messages/bob/{id}/clientupdated"))).await?;
    bob.publish_json(&chat.topic("users/bob/conversations/alice/archive"), &json!({})).await?;
    expect_on(bob, &chat.topic("users/bob/conversations/alice/clientdeleted")).await?;
    Ok(copy)
}
