//! The plugin chain on the wire: every verdict as seen by the sender and the recipients, a
//! hostile plugin contained by its limits, and hot reloads that lose nothing.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use inboxd_e2e::daemon::{cli, env_for, http_get};
use inboxd_e2e::{ConnectOptions, MqttUser, eventually};
use serde_json::{Value, json};

use crate::util::{Chat, PluginSetup, Spawned, WAIT, expect_on, next};

fn inbox(chat: &Chat, owner: &str, with: &str) -> String {
    inbox_of(&chat.app, owner, with)
}

/// `owner`'s inbox topic for messages in the conversation with `with`, in `app`.
fn inbox_of(app: &str, owner: &str, with: &str) -> String {
    format!("apps/{app}/users/{owner}/messages/{with}/clientadded")
}

#[tokio::test]
async fn verdicts_as_seen_by_sender_and_recipients() -> Result<()> {
    let plugins = PluginSetup::new(
        &["rust-redactor", "rust-ratelimit", "rust-blocklist"],
        r#"
[[plugins.chain]]
name = "redactor"
file = "rust-redactor.wasm"

[[plugins.chain]]
name = "ratelimit"
file = "rust-ratelimit.wasm"
config = { max = 3, window_ms = 600000 }

[[plugins.chain]]
name = "blocklist"
file = "rust-blocklist.wasm"
config = { blocked = { bob = ["mallory"] } }
"#,
    )?;
    let chat = Chat::builder().plugins(&plugins).start().await?;
    let mut alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let mut mallory = chat.user("mallory").await?;

    // modify: both copies carry the redacted text
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "mail me at alice@example.com"})).await?;
    for (user, topic) in [(&mut alice, inbox(&chat, "alice", "bob")), (&mut bob, inbox(&chat, "bob", "alice"))] {
        let copy = expect_on(user, &topic).await?;
        let text = copy["text"].as_str().context("text")?;
        ensure!(!text.contains("alice@example.com") && text.contains("[redacted]"), "{text}");
    }

    // on-deliver reject: bob blocked mallory; she still gets her own copy, bob nothing
    mallory.publish_json(&mallory.outgoing_topic("bob"), &json!({"text": "let me in"})).await?;
    ensure!(expect_on(&mut mallory, &inbox(&chat, "mallory", "bob")).await?["status"] == 100, "mallory's copy");
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": "still here"})).await?;
    let (topic, body) = next(&mut bob).await?;
    ensure!(topic == inbox(&chat, "bob", "alice") && body["text"] == "still here", "bob got {topic}: {body}");

    // reject with notify-sender: the fourth message in the window
    let mut carol = chat.user("carol").await?;
    let mut dave = chat.user("dave").await?;
    for n in 0..4 {
        carol.publish_json(&carol.outgoing_topic("dave"), &json!({"text": format!("n{n}")})).await?;
    }
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let copy = expect_on(&mut carol, &inbox(&chat, "carol", "dave")).await?;
        statuses.push(copy["status"].as_i64().context("status")?);
        if copy["status"] == -100 {
            let rejection = &copy["attributes"]["rejection"];
            ensure!(rejection["plugin"] == "ratelimit" && rejection["code"] == "rate-limited", "{copy}");
            ensure!(rejection["reason"].as_str().is_some_and(|r| !r.is_empty()) && copy["text"] == "n3", "{copy}");
        }
    }
    ensure!(statuses == [100, 100, 100, -100], "carol's copies: {statuses:?}");
    let got: Vec<Value> = dave.recv_n(3, WAIT).await?.iter().map(|m| m.json()).collect::<Result<_>>()?;
    ensure!(got.iter().map(|m| m["text"].clone()).collect::<Vec<_>>() == ["n0", "n1", "n2"], "dave got {got:?}");
    // carol saw n3 refused, so it was handled; dave's answer is handled after it, in the same
    // conversation: had n3 reached dave, it would come before his own copy of the answer.
    dave.publish_json(&dave.outgoing_topic("carol"), &json!({"text": "answer"})).await?;
    let answer = expect_on(&mut dave, &inbox(&chat, "dave", "carol")).await?;
    ensure!(answer["text"] == "answer", "dave got {answer} before his answer");
    chat.daemon.stop().await
}

#[tokio::test]
async fn drop_reaches_nobody_and_hold_waits_for_a_moderator() -> Result<()> {
    // With a store: the released message must land in history like any other.
    let db = inboxd_e2e::db::TestDb::sqlite()?;
    let plugins = PluginSetup::new(
        &["rust-hostile"],
        &format!(
            r#"
[[plugins.chain]]
name = "dropper"
file = "rust-hostile.wasm"
config = {{ behaviour = "drop", trigger = "DROP" }}

[[plugins.chain]]
name = "moderation"
file = "rust-hostile.wasm"
config = {{ behaviour = "hold", trigger = "HOLD" }}

[store]
url = {url:?}
"#,
            url = db.url()
        ),
    )?;
    // The store comes from the config file, as for the `inboxd held` commands.
    let chat = Chat::builder().plugins(&plugins).unset("INBOXD_STORE_URL").start().await?;
    let mut alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    for text in ["DROP this", "HOLD this", "plain"] {
        alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": text})).await?;
    }
    // One conversation is delivered in order: the first thing either side sees is "plain".
    ensure!(expect_on(&mut bob, &inbox(&chat, "bob", "alice")).await?["text"] == "plain", "bob saw a refused message");
    ensure!(expect_on(&mut alice, &inbox(&chat, "alice", "bob")).await?["text"] == "plain", "alice saw one");

    let mut env = env_for(chat.node, &chat.app);
    env.remove("INBOXD_STORE_URL");
    env.insert("INBOXD_CONFIG".into(), plugins.config.display().to_string());
    let listed = cli(&["held", "list"], &env).await?;
    let listing = String::from_utf8_lossy(&listed.stdout);
    ensure!(listed.status.success(), "held list failed: {}", String::from_utf8_lossy(&listed.stderr));
    ensure!(listing.contains("moderation") && listing.contains("held for review"), "held list: {listing}");
    let released = cli(&["held", "release", "--all"], &env).await?;
    ensure!(released.status.success(), "held release failed: {}", String::from_utf8_lossy(&released.stderr));

    let theirs = expect_on(&mut bob, &inbox(&chat, "bob", "alice")).await?;
    ensure!(theirs["text"] == "HOLD this" && theirs["status"] == 150 && theirs["sender"] == "alice", "{theirs}");
    ensure!(expect_on(&mut alice, &inbox(&chat, "alice", "bob")).await?["status"] == 100, "alice's released copy");
    let after = cli(&["held", "list"], &env).await?;
    ensure!(!String::from_utf8_lossy(&after.stdout).contains("held for review"), "still held after release");
    let url = db.url().parse().map_err(anyhow::Error::msg)?;
    let store = inboxd::store::Store::open(&url).await?.context("a store")?;
    // Read from another process: inboxd applies its last writes within a pass.
    eventually(WAIT, "both copies in bob's history", async || {
        let history = store.messages(&chat.app, "bob", "alice", None, 10).await?;
        // Both were stamped on arrival, possibly in the same millisecond: compare as a set.
        let mut texts: Vec<&str> = history.iter().filter_map(|m| m["text"].as_str()).collect();
        texts.sort_unstable();
        ensure!(texts == ["HOLD this", "plain"], "bob's history: {texts:?}");
        Ok(())
    })
    .await?;
    store.close().await;
    chat.daemon.stop().await
}

#[tokio::test]
async fn hostile_plugin_is_stopped_by_its_limits_and_the_next_message_flows() -> Result<()> {
    let plugins = PluginSetup::new(
        &["rust-hostile"],
        r#"
[[plugins.chain]]
name = "looper"
file = "rust-hostile.wasm"
config = { behaviour = "loop", trigger = "LOOP" }
failure = "fail-open"
deadline_ms = 100

[[plugins.chain]]
name = "hog"
file = "rust-hostile.wasm"
config = { behaviour = "memory", trigger = "MEMORY" }
failure = "fail-closed"
memory_mb = 16

[[plugins.chain]]
name = "crasher"
file = "rust-hostile.wasm"
config = { behaviour = "trap", trigger = "TRAP" }
failure = "fail-closed"
"#,
    )?;
    let chat = Chat::builder().plugins(&plugins).start().await?;
    let mut alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    for text in ["LOOP", "MEMORY", "TRAP", "fine"] {
        alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": text})).await?;
    }
    // fail-open skips the looping plugin; fail-closed rejects with plugin-failed
    let mut seen = BTreeMap::new();
    for _ in 0..4 {
        let copy = expect_on(&mut alice, &inbox(&chat, "alice", "bob")).await?;
        seen.insert(copy["text"].as_str().context("text")?.to_owned(), copy);
    }
    ensure!(seen["LOOP"]["status"] == 100 && seen["fine"]["status"] == 100, "{seen:?}");
    for (text, plugin) in [("MEMORY", "hog"), ("TRAP", "crasher")] {
        let rejection = &seen[text]["attributes"]["rejection"];
        ensure!(seen[text]["status"] == -100 && rejection["plugin"] == plugin, "{text}: {}", seen[text]);
        ensure!(rejection["code"] == "plugin-failed", "{text}: {}", seen[text]);
    }
    let got: Vec<String> = bob
        .recv_n(2, WAIT)
        .await?
        .iter()
        .map(|m| Ok(m.json()?["text"].as_str().context("text")?.to_owned()))
        .collect::<Result<_>>()?;
    ensure!(got == ["LOOP", "fine"], "bob got {got:?}");
    chat.daemon.stop().await
}

const REDACTOR_CHAIN: &str = r#"
[[plugins.chain]]
name = "redactor"
file = "rust-redactor.wasm"
config = { mask = "MASK" }
"#;

/// Sends probes until one comes back masked with `mask` (the reload has happened).
/// `bobs_inbox` is bob's inbox topic for alice's messages.
async fn wait_for_mask(alice: &MqttUser, bob: &mut MqttUser, bobs_inbox: &str, mask: &str) -> Result<()> {
    let mut probe = 0;
    eventually(WAIT, format!("the chain switching to mask {mask}"), async || {
        probe += 1;
        alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": format!("probe {probe} x@y.org")})).await?;
        let copy = expect_on(bob, bobs_inbox).await?;
        ensure!(copy["text"].as_str().is_some_and(|t| t.contains(mask)), "probe {probe} came back as {copy}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn hot_reload_during_a_stream_loses_nothing_and_later_messages_see_the_new_chain() -> Result<()> {
    const STREAM: usize = 300;
    let plugins = PluginSetup::new(&["rust-redactor"], &REDACTOR_CHAIN.replace("MASK", "[A]"))?;
    let chat = Chat::builder().plugins(&plugins).start().await?;
    let alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    for seq in 0..STREAM {
        alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": format!("{seq} x@y.org")})).await?;
        if seq == STREAM / 3 {
            plugins.write_config(&REDACTOR_CHAIN.replace("MASK", "[B]"))?;
        }
    }
    let mut masks = Vec::new();
    for copy in bob.recv_n(STREAM, WAIT * 3).await? {
        let text = copy.json()?["text"].as_str().context("text")?.to_owned();
        let (seq, rest) = text.split_once(' ').context("no seq")?;
        ensure!(seq.parse::<usize>()? == masks.len(), "out of order or lost: {text}");
        ensure!(rest == "[A]" || rest == "[B]", "unmasked or garbled: {text}");
        masks.push(rest.to_owned());
    }
    // One chain per message, swapped once: every [A] comes before every [B].
    let switched = masks.iter().position(|m| m == "[B]").unwrap_or(STREAM);
    ensure!(masks[switched..].iter().all(|m| m == "[B]"), "the chain flipped back: {masks:?}");
    wait_for_mask(&alice, &mut bob, &inbox(&chat, "bob", "alice"), "[B]").await?;
    chat.daemon.stop().await
}

#[tokio::test]
async fn a_broken_plugin_file_keeps_the_running_chain() -> Result<()> {
    let plugins = PluginSetup::new(&["rust-redactor"], &REDACTOR_CHAIN.replace("MASK", "[A]"))?;
    // The real binary, for its /metrics: the failed reload is counted there.
    let Spawned { node, app, address, daemon: _daemon } = plugins.spawn().await?;
    let connect = async |user: &str| {
        let mqtt = MqttUser::connect(node, user, &app, ConnectOptions::default()).await?;
        mqtt.subscribe_inbox().await?;
        anyhow::Ok(mqtt)
    };
    let (mut alice, mut bob) = (connect("alice").await?, connect("bob").await?);
    let (alices_inbox, bobs_inbox) = (inbox_of(&app, "alice", "bob"), inbox_of(&app, "bob", "alice"));

    plugins.write_plugin("rust-redactor.wasm", b"\0asm this is not a component")?;
    plugins.write_config(&REDACTOR_CHAIN.replace("MASK", "[B]"))?;
    eventually(WAIT, "a failed reload counted in /metrics", async || {
        let (_, metrics) = http_get(address, "/metrics").await?;
        let failed = metrics.lines().any(|l| l.starts_with("inboxd_policy_reloads_total{outcome=\"failed\"}"));
        ensure!(failed, "no failed reload yet");
        Ok(())
    })
    .await?;
    for n in 0..5 {
        alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": format!("{n} x@y.org")})).await?;
        let copy = expect_on(&mut bob, &bobs_inbox).await?;
        ensure!(copy["text"] == format!("{n} [A]").as_str(), "after the broken file's reload failed: {copy}");
        expect_on(&mut alice, &alices_inbox).await?;
    }
    // Fixing the file lets the pending config change through.
    plugins.write_plugin("rust-redactor.wasm", &PluginSetup::built("rust-redactor")?)?;
    wait_for_mask(&alice, &mut bob, &bobs_inbox, "[B]").await
}
