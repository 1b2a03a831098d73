//! The moderation console in a real browser: headless chromium over WebDriver against the
//! inboxd binary (so `/metrics` and the overview are live) on the shared node, with the keyword
//! filter rejecting and the example hold plugin holding. A moderator logs in, sees held messages,
//! releases one (the recipient's MQTT client gets it) and discards another (never delivered),
//! and sees the rejection under recent refusals; a viewer cannot release; no action passes
//! without the CSRF token; no console URL answers without a session; two releases of one entry
//! at once deliver it once; a forged dead letter is not replayed past routing. Each page is
//! screenshotted at 1280×800 and 390×844 under `target/console-screenshots/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use fantoccini::Locator;
use inboxd::console::password;
use inboxd_e2e::amqp::Observer;
use inboxd_e2e::browser::Browser;
use inboxd_e2e::daemon::{Process, http_request};
use inboxd_e2e::{ConnectOptions, MqttUser, PrivateNode, eventually};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation};
use serde_json::{Value, json};

use crate::util::{PluginSetup, Spawned, WAIT, assert_ready, expect_on};

const MODERATOR: (&str, &str) = ("mod", "moderator's long passphrase");
const VIEWER: (&str, &str) = ("view", "viewer's long passphrase");
/// The window sizes every page is screenshotted at: a laptop, a phone.
const SIZES: [(u32, u32); 2] = [(1280, 800), (390, 844)];

/// A daemon with the console on, its chain holding `HOLD` and rejecting `forbidden`.
struct Console {
    node: &'static PrivateNode,
    app: String,
    address: SocketAddr,
    _daemon: Process,
    _plugins: PluginSetup,
}

impl Console {
    async fn start() -> Result<Console> {
        let account = |(name, pass): (&str, &str), role: &str| -> Result<String> {
            let hash = password::hash(pass)?;
            Ok(format!("[[console.accounts]]\nname = {name:?}\npassword_hash = {hash:?}\nrole = {role:?}\n"))
        };
        let chain = format!(
            r#"
[[plugins.chain]]
name = "wordfilter"
file = "rust-keyword.wasm"
config = {{ words = ["forbidden"] }}

[[plugins.chain]]
name = "moderation"
file = "rust-hostile.wasm"
config = {{ behaviour = "hold", trigger = "HOLD" }}

[console]
enabled = true
refusal_bodies = true

{moderator}
{viewer}
"#,
            moderator = account(MODERATOR, "moderator")?,
            viewer = account(VIEWER, "viewer")?,
        );
        let plugins = PluginSetup::new(&["rust-keyword", "rust-hostile"], &chain)?;
        let Spawned { node, app, address, daemon } = plugins.spawn().await?;
        Ok(Console { node, app, address, _daemon: daemon, _plugins: plugins })
    }

    async fn user(&self, name: &str) -> Result<MqttUser> {
        let mqtt = MqttUser::connect(self.node, name, &self.app, ConnectOptions::default())
            .await
            .with_context(|| format!("setup failed: connecting {name}"))?;
        mqtt.subscribe_inbox().await?;
        Ok(mqtt)
    }

    fn inbox(&self, owner: &str, with: &str) -> String {
        format!("apps/{}/users/{owner}/messages/{with}/clientadded", self.app)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }
}

/// Where the screenshots go: `target/console-screenshots/`.
fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("../console-screenshots")
}

/// Opens `/console/` without a session, lands on the login page and submits `account`.
async fn submit_login(browser: &Browser, console: &Console, (name, pass): (&str, &str)) -> Result<()> {
    let client = &browser.client;
    client.goto(&console.url("/console/")).await?;
    let landed = client.current_url().await?;
    ensure!(landed.path() == "/console/login", "without a session /console/ led to {landed}");
    client.find(Locator::Css("#user")).await?.send_keys(name).await?;
    client.find(Locator::Css("#password")).await?.send_keys(pass).await?;
    client.find(Locator::Css("#login-button")).await?.click().await?;
    Ok(())
}

/// Logs `account` in through the login form; the console then shows who is logged in.
async fn log_in(browser: &Browser, console: &Console, (name, pass): (&str, &str)) -> Result<()> {
    let client = &browser.client;
    submit_login(browser, console, (name, pass)).await?;
    eventually(WAIT, format!("{name} logged in"), async || {
        let who = client.find(Locator::Css("#who")).await?.text().await?;
        ensure!(who.starts_with(name), "the header says {who:?}");
        Ok(())
    })
    .await
}

/// Opens console page `name` (`held`, `refusals`, ...).
async fn open(browser: &Browser, console: &Console, name: &str) -> Result<()> {
    browser.client.goto(&console.url(&format!("/console/#{name}"))).await?;
    Ok(())
}

/// `fetch(path, init)` in the page: the answer's status and JSON.
async fn fetch(browser: &Browser, path: &str, init: Value) -> Result<(u64, Value)> {
    let script = r#"
        const [path, init, done] = arguments;
        fetch(path, init)
            .then(async (r) => done({ status: r.status, body: await r.json().catch(() => null) }))
            .catch((e) => done({ status: 0, body: String(e) }));
    "#;
    let answer = browser.run_async(script, vec![json!(path), init]).await?;
    Ok((answer["status"].as_u64().unwrap_or(0), answer["body"].clone()))
}

/// The session's CSRF token, as the page gets it.
async fn csrf(browser: &Browser) -> Result<String> {
    let (status, session) = fetch(browser, "/console/api/session", json!({})).await?;
    ensure!(status == 200, "GET /console/api/session answered {status}: {session}");
    session["csrf"].as_str().map(str::to_owned).context("no csrf in the session")
}

/// The held entries as the console's API lists them: (text, message id).
async fn held(browser: &Browser) -> Result<Vec<(String, String)>> {
    let (status, body) = fetch(browser, "/console/api/held", json!({})).await?;
    ensure!(status == 200, "GET /console/api/held answered {status}: {body}");
    let entries = body["entries"].as_array().context("no entries")?;
    Ok(entries
        .iter()
        .map(|e| {
            (e["body"]["text"].as_str().unwrap_or("").to_owned(), e["message_id"].as_str().unwrap_or("").to_owned())
        })
        .collect())
}

/// Waits until the console holds exactly the messages with `texts`; their ids, in that order.
async fn wait_held(browser: &Browser, texts: &[&str]) -> Result<Vec<String>> {
    eventually(WAIT, format!("held: {texts:?}"), async || {
        let listed = held(browser).await?;
        ensure!(listed.len() == texts.len(), "held now: {listed:?}");
        texts
            .iter()
            .map(|text| listed.iter().find(|(t, _)| t == text).map(|(_, id)| id.clone()).context("not held yet"))
            .collect()
    })
    .await
}

/// Clicks the element `css` once it is there (the page re-renders as it polls).
async fn click(browser: &Browser, css: &str) -> Result<()> {
    eventually(WAIT, format!("clicking {css}"), async || {
        browser.client.find(Locator::Css(css)).await?.click().await?;
        Ok(())
    })
    .await
}

/// Waits until `css` matches `count` elements.
async fn wait_count(browser: &Browser, css: &str, count: usize) -> Result<()> {
    eventually(WAIT, format!("{count} × {css}"), async || {
        let found = browser.client.find_all(Locator::Css(css)).await?.len();
        ensure!(found == count, "{found} found");
        Ok(())
    })
    .await
}

/// The text of the first element `css` matches, once it contains `wanted`.
async fn wait_text(browser: &Browser, css: &str, wanted: &str) -> Result<String> {
    eventually(WAIT, format!("{css} showing {wanted:?}"), async || {
        let text = browser.client.find(Locator::Css(css)).await?.text().await?;
        ensure!(text.contains(wanted), "it shows {text:?}");
        Ok(text)
    })
    .await
}

/// Screenshots the page now shown at both sizes, as `<name>-<w>x<h>.png`.
async fn snap(browser: &Browser, name: &str) -> Result<()> {
    for (width, height) in SIZES {
        browser.resize(width, height).await?;
        browser.screenshot(&screenshots(), &format!("{name}-{width}x{height}")).await?;
    }
    browser.resize(SIZES[0].0, SIZES[0].1).await
}

#[tokio::test]
async fn a_moderator_releases_discards_and_sees_refusals() -> Result<()> {
    let console = Console::start().await?;
    let (mut alice, mut bob) = (console.user("alice").await?, console.user("bob").await?);
    let (alices_inbox, bobs_inbox) = (console.inbox("alice", "bob"), console.inbox("bob", "alice"));
    for text in ["HOLD one", "HOLD two", "a forbidden word", "plain"] {
        alice.publish_json(&alice.outgoing_topic("bob"), &json!({ "text": text })).await?;
    }
    // One conversation is delivered in order: bob's first message is "plain", after the others.
    ensure!(expect_on(&mut bob, &bobs_inbox).await?["text"] == "plain", "bob saw a refused or held message");
    let failed = expect_on(&mut alice, &alices_inbox).await?;
    ensure!(failed["status"] == -100 && failed["text"] == "a forbidden word", "alice's FAILED copy: {failed}");

    let browser = Browser::open(SIZES[0].0, SIZES[0].1).await?;
    browser.client.goto(&console.url("/console/login")).await?;
    snap(&browser, "login").await?;
    log_in(&browser, &console, MODERATOR).await?;
    let ids = wait_held(&browser, &["HOLD one", "HOLD two"]).await?;
    let (release, discard) = (&ids[0], &ids[1]);

    open(&browser, &console, "held").await?;
    wait_text(&browser, &format!("tr.entry[data-id=\"{release}\"]"), "moderation").await?;
    wait_text(&browser, &format!("tr.entry[data-id=\"{discard}\"]"), "held for review").await?;
    click(&browser, &format!("tr.entry[data-id=\"{release}\"] button.open")).await?;
    wait_text(&browser, &format!("tr.details[data-for=\"{release}\"] pre.body"), "HOLD one").await?;
    snap(&browser, "held").await?;

    click(&browser, &format!("button.release[data-id=\"{release}\"]")).await?;
    let released = expect_on(&mut bob, &bobs_inbox).await?;
    ensure!(released["text"] == "HOLD one" && released["sender"] == "alice", "bob got {released}");
    wait_text(&browser, "#status", "Released 1").await?;
    wait_count(&browser, &format!("tr.entry[data-id=\"{release}\"]"), 0).await?;

    click(&browser, &format!("button.discard[data-id=\"{discard}\"]")).await?;
    wait_text(&browser, "#status", "Discarded 1").await?;
    wait_count(&browser, "tr.entry", 0).await?;
    ensure!(held(&browser).await?.is_empty(), "still held after the discard");
    // The discarded message never comes: bob's next message is the one sent after it.
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({ "text": "after" })).await?;
    ensure!(expect_on(&mut bob, &bobs_inbox).await?["text"] == "after", "bob got something before `after`");

    open(&browser, &console, "refusals").await?;
    wait_text(&browser, "#refusals-table tr.refusal td.plugin", "wordfilter").await?;
    let code = browser.client.find(Locator::Css("#refusals-table tr.refusal td.code")).await?.text().await?;
    ensure!(code == "keyword", "the refusal's code is {code:?}");
    wait_text(&browser, "#refusals-table tr.refusal", "a forbidden word").await?;
    snap(&browser, "refusals").await?;

    open(&browser, &console, "audit").await?;
    wait_text(&browser, "#audit-table", release).await?;
    wait_text(&browser, "#audit-table", discard).await?;
    snap(&browser, "audit").await?;

    open(&browser, &console, "overview").await?;
    wait_text(&browser, "#plugins-table", "keyword 1").await?;
    snap(&browser, "overview").await?;
    open(&browser, &console, "chain").await?;
    wait_text(&browser, "#chain-table", "rust-hostile.wasm").await?;
    click(&browser, "#reload").await?;
    wait_text(&browser, "#reloads-table", "console").await?;
    snap(&browser, "chain").await?;
    open(&browser, &console, "dead").await?;
    wait_text(&browser, "h1", "Dead letters").await?;
    snap(&browser, "dead").await?;
    browser.close().await
}

#[tokio::test]
async fn viewers_cannot_act_and_nothing_passes_without_session_or_csrf() -> Result<()> {
    let console = Console::start().await?;
    let (alice, mut bob) = (console.user("alice").await?, console.user("bob").await?);
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({ "text": "HOLD me" })).await?;

    // No session: every console URL redirects to the login page (pages) or answers 401 (API).
    for (method, path) in [
        ("GET", "/console/"),
        ("GET", "/console/console.js"),
        ("GET", "/console/no-such-page"),
        ("GET", "/console/api/held"),
        ("GET", "/console/api/session"),
        ("GET", "/console/api/refusals"),
        ("GET", "/console/api/dead"),
        ("GET", "/console/api/chain"),
        ("GET", "/console/api/audit"),
        ("GET", "/console/api/overview"),
        ("POST", "/console/api/held/release"),
        ("POST", "/console/api/chain/reload"),
        ("POST", "/console/logout"),
    ] {
        let answer = http_request(console.address, method, path, &[]).await?;
        let to_login = answer.status == 303 && answer.header("location") == Some("/console/login");
        ensure!(to_login || answer.status == 401, "{method} {path} without a session answered {}", answer.status);
    }
    let forged = [("Cookie", "inboxd_console=0000")];
    let answer = http_request(console.address, "GET", "/console/api/held", &forged).await?;
    ensure!(answer.status == 401, "a made-up session answered {}", answer.status);

    // A wrong password is refused.
    let browser = Browser::open(SIZES[0].0, SIZES[0].1).await?;
    submit_login(&browser, &console, (MODERATOR.0, "not the password")).await?;
    wait_text(&browser, "p.error", "Wrong name or password").await?;
    ensure!(browser.client.find_all(Locator::Css("#who")).await?.is_empty(), "a wrong password logged in");

    // A viewer sees the held message but has no release button, and a release is refused.
    log_in(&browser, &console, VIEWER).await?;
    let id = wait_held(&browser, &["HOLD me"]).await?.remove(0);
    open(&browser, &console, "held").await?;
    wait_text(&browser, &format!("tr.entry[data-id=\"{id}\"]"), "moderation").await?;
    wait_count(&browser, "button.release", 0).await?;
    wait_count(&browser, "button.discard", 0).await?;
    let token = csrf(&browser).await?;
    let release = |token: Option<&str>| {
        let mut headers = json!({ "Content-Type": "application/json" });
        if let Some(token) = token {
            headers["X-CSRF-Token"] = json!(token);
        }
        json!({ "method": "POST", "headers": headers, "body": json!({ "ids": [id] }).to_string() })
    };
    let (status, body) = fetch(&browser, "/console/api/held/release", release(Some(token.as_str()))).await?;
    ensure!(status == 403, "a viewer's release answered {status}: {body}");
    snap(&browser, "held-viewer").await?;
    browser.close().await?;

    // A moderator's release without (or with a wrong) CSRF token is refused too.
    let browser = Browser::open(SIZES[0].0, SIZES[0].1).await?;
    log_in(&browser, &console, MODERATOR).await?;
    for token in [None, Some("0".repeat(64).as_str())] {
        let (status, body) = fetch(&browser, "/console/api/held/release", release(token)).await?;
        ensure!(status == 403, "a release with CSRF token {token:?} answered {status}: {body}");
    }
    ensure!(wait_held(&browser, &["HOLD me"]).await? == [id.clone()], "a refused release released");

    // Two releases of one entry at once (two moderators' clicks): it is delivered once.
    let token = csrf(&browser).await?;
    let script = r#"
        const [init, done] = arguments;
        const release = () => fetch("/console/api/held/release", init).then((r) => r.json());
        Promise.all([release(), release()]).then(done, (e) => done(String(e)));
    "#;
    let both = browser.run_async(script, vec![release(Some(token.as_str()))]).await?;
    let released: u64 = both.as_array().context("two answers")?.iter().filter_map(|a| a["released"].as_u64()).sum();
    ensure!(released == 1, "two concurrent releases released {released}: {both}");
    let bobs_inbox = console.inbox("bob", "alice");
    ensure!(expect_on(&mut bob, &bobs_inbox).await?["text"] == "HOLD me", "bob did not get the released message");
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({ "text": "marker" })).await?;
    ensure!(expect_on(&mut bob, &bobs_inbox).await?["text"] == "marker", "bob got the released message twice");
    browser.close().await
}

#[tokio::test]
async fn dead_letters_are_browsed_replayed_and_discarded() -> Result<()> {
    let console = Console::start().await?;
    let alice = console.user("alice").await?;
    alice.publish(&alice.outgoing_topic("bob"), b"not json".to_vec()).await?;
    let browser = Browser::open(SIZES[0].0, SIZES[0].1).await?;
    log_in(&browser, &console, MODERATOR).await?;
    let letters = async || {
        let (status, body) = fetch(&browser, "/console/api/dead", json!({})).await?;
        ensure!(status == 200, "GET /console/api/dead answered {status}: {body}");
        anyhow::Ok(body["letters"].as_array().cloned().unwrap_or_default())
    };
    let letter = eventually(WAIT, "a dead letter", async || {
        let letters = letters().await?;
        ensure!(letters.len() == 1, "letters: {letters:?}");
        Ok(letters[0].clone())
    })
    .await?;
    ensure!(letter["reason"] == "invalid-json" && letter["body"] == "not json", "the letter: {letter}");
    let id = letter["id"].as_str().context("a letter id")?.to_owned();

    open(&browser, &console, "dead").await?;
    wait_text(&browser, &format!("#dead-table tr[data-id=\"{id}\"]"), "invalid-json").await?;
    // Replayed, it comes back through inboxd, which dead-letters it again (counted twice).
    click(&browser, &format!("button.replay[data-id=\"{id}\"]")).await?;
    wait_text(&browser, "#status", "Replayed 1").await?;
    eventually(WAIT, "the replayed letter dead-lettered again", async || {
        let (_, metrics) = http_request(console.address, "GET", "/metrics", &[]).await.map(|a| (a.status, a.body))?;
        ensure!(metrics.contains("inboxd_dead_lettered_total{reason=\"invalid-json\"} 2"), "not yet");
        ensure!(letters().await?.len() == 1, "not back in the queue yet");
        Ok(())
    })
    .await?;
    click(&browser, &format!("button.discard[data-id=\"{id}\"]")).await?;
    wait_text(&browser, "#status", "Discarded 1").await?;
    ensure!(letters().await?.is_empty(), "the discarded letter is still there");
    open(&browser, &console, "audit").await?;
    wait_text(&browser, "#audit-table", "discard-dead").await?;
    wait_text(&browser, "#audit-table", "replay").await?;
    browser.close().await
}

/// A dead letter forged through the default exchange (anyone who may write to it can put one
/// in the dead-letter queue) is not replayed past routing: one naming bob's inbox and one whose
/// key is over AMQP's 255 bytes are each refused with 422 and the reason, stay in the queue,
/// and bob gets nothing; the console and the daemon keep serving.
#[tokio::test]
async fn forged_dead_letters_are_not_replayed_past_routing() -> Result<()> {
    let console = Console::start().await?;
    let alice = console.user("alice").await?;
    let mut bob = console.user("bob").await?;
    let observer = Observer::connect(console.node).await?;
    let dead_queue = format!("inboxd.{}.dead", console.app);
    let victims_inbox = format!("apps.{}.users.bob.messages.alice.clientadded", console.app);
    let too_long = format!("apps.{}.outgoing.users.{}.messages.bob.outgoing", console.app, "a".repeat(300));
    let forged = [("forged-inbox", victims_inbox.as_str()), ("forged-long", too_long.as_str())];
    for (id, key) in forged {
        let mut headers = FieldTable::default();
        headers.insert("x-inboxd-reason".into(), AMQPValue::LongString("invalid-json".into()));
        headers.insert("x-inboxd-routing-key".into(), AMQPValue::LongString(key.into()));
        let properties =
            BasicProperties::default().with_delivery_mode(2).with_message_id(id.into()).with_headers(headers);
        let body = json!({"text": "forged", "sender": "alice", "recipient": "bob", "status": 150}).to_string();
        let options = BasicPublishOptions::default();
        let confirm = observer.channel().basic_publish(
            "".into(),
            dead_queue.as_str().into(),
            options,
            body.as_bytes(),
            properties,
        );
        ensure!(matches!(confirm.await?.await?, Confirmation::Ack(_)), "the broker refused the forged letter {id}");
    }

    let browser = Browser::open(SIZES[0].0, SIZES[0].1).await?;
    log_in(&browser, &console, MODERATOR).await?;
    let listed = async || {
        let (status, body) = fetch(&browser, "/console/api/dead", json!({})).await?;
        ensure!(status == 200, "GET /console/api/dead answered {status}: {body}");
        let mut ids: Vec<String> = body["letters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        anyhow::Ok(ids)
    };
    eventually(WAIT, "both forged letters listed", async || {
        let ids = listed().await?;
        ensure!(ids == ["forged-inbox", "forged-long"], "listed: {ids:?}");
        Ok(())
    })
    .await?;
    let token = csrf(&browser).await?;
    for (id, why) in [("forged-inbox", "is not a key inboxd consumes"), ("forged-long", "over AMQP's limit of 255")] {
        let headers = json!({ "Content-Type": "application/json", "X-CSRF-Token": token });
        let init = json!({ "method": "POST", "headers": headers, "body": json!({ "ids": [id] }).to_string() });
        let (status, answer) = fetch(&browser, "/console/api/dead/replay", init).await?;
        let error = answer["error"].as_str().unwrap_or_default();
        ensure!(status == 422 && answer["done"] == 0 && error.contains(why), "replaying {id}: {status} {answer}");
    }
    ensure!(listed().await? == ["forged-inbox", "forged-long"], "a refused letter left the queue");
    // Nothing reached bob's inbox: the next thing he gets is alice's marker.
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({ "text": "marker" })).await?;
    ensure!(expect_on(&mut bob, &console.inbox("bob", "alice")).await?["text"] == "marker", "bob got a forged letter");
    assert_ready(console.address).await?;
    browser.close().await
}
