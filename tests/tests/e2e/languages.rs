//! The keyword/link filter written in Rust, JavaScript, Python and C, each alone in the chain
//! of a daemon: the same messages give the same verdicts on the wire, whatever the language.

use std::collections::HashMap;

use anyhow::{Context, Result, ensure};
use inboxd::config::Config;
use inboxd::plugin::{Runtime, sha256_hex};
use serde_json::{Value, json};

use crate::util::{Chat, PluginSetup, expect_on};

/// What alice sends bob, and whether it is rejected (code, reason).
fn messages() -> Vec<(Value, Option<(&'static str, &'static str)>)> {
    vec![
        (json!({"text": "hello bob", "type": "text"}), None),
        (json!({"text": "that is a badword"}), Some(("keyword", "the word \"badword\" is not allowed"))),
        (json!({"text": "docs at https://docs.example.com/a"}), None),
        (json!({"text": "win at http://evil.com/prize"}), Some(("link", "links to evil.com are not allowed"))),
        (json!({"text": "Cheap SPAM, see WWW.Example.COM"}), Some(("keyword", "the word \"spam\" is not allowed"))),
        (json!({"type": "image", "metadata": {"src": "http://evil.com/x.png"}}), None),
    ]
}

/// Compiles `plugin` into the compile cache the daemon will use, so that the daemon's start
/// (bounded by the harness) does not include a cold compile of a large component.
async fn precompile(plugins: &PluginSetup, plugin: &str) -> Result<()> {
    let config = Config::load(Some(&plugins.config), &HashMap::new()).context("setup failed: the plugin config")?;
    let wasm = PluginSetup::built(plugin)?;
    tokio::task::spawn_blocking(move || -> Result<()> {
        let runtime = Runtime::new(Some(&config.plugins.cache_dir), false)?;
        runtime.compile(&sha256_hex(&wasm), &wasm)?;
        Ok(())
    })
    .await?
    .with_context(|| format!("setup failed: precompiling {plugin}"))
}

/// Runs [`messages`] through a daemon whose chain is only `plugin` and checks both inboxes.
async fn same_verdicts_on_the_wire(plugin: &str) -> Result<()> {
    let chain = format!(
        r#"
[[plugins.chain]]
name = "keyword"
file = "{plugin}.wasm"
config = {{ words = ["badword", "Spam"], allowed_domains = ["example.com"], notify_sender = true }}
hooks = ["on-message"]
"#
    );
    let plugins = PluginSetup::new(&[plugin], &chain)?;
    precompile(&plugins, plugin).await?;
    let chat = Chat::builder().plugins(&plugins).start().await?;
    let mut alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let sent = messages();
    for (body, _) in &sent {
        alice.publish_json(&alice.outgoing_topic("bob"), body).await?;
    }

    // One conversation is delivered in order: alice sees every message, bob the accepted ones.
    let mine = chat.topic("users/alice/messages/bob/clientadded");
    let theirs = chat.topic("users/bob/messages/alice/clientadded");
    for (body, verdict) in &sent {
        let copy = expect_on(&mut alice, &mine).await?;
        ensure!(copy.get("text") == body.get("text"), "{plugin}: alice's copies out of order: {copy}");
        match verdict {
            None => ensure!(copy["status"] == 100, "{plugin}: expected an accepted copy: {copy}"),
            Some((code, reason)) => {
                let rejection = &copy["attributes"]["rejection"];
                ensure!(copy["status"] == -100, "{plugin}: expected a FAILED copy: {copy}");
                ensure!(
                    *rejection == json!({"plugin": "keyword", "code": code, "reason": reason}),
                    "{plugin}: rejection {rejection}, expected {code}: {reason}"
                );
            }
        }
    }
    // In order, and the last message is accepted: a rejected one reaching bob would show up
    // here, in place of a later accepted one.
    ensure!(sent.last().is_some_and(|(_, verdict)| verdict.is_none()), "the last message must be accepted");
    for (body, _) in sent.iter().filter(|(_, verdict)| verdict.is_none()) {
        let copy = expect_on(&mut bob, &theirs).await?;
        ensure!(copy["status"] == 150 && copy.get("text") == body.get("text"), "{plugin}: bob got {copy}");
    }
    chat.daemon.stop().await
}

#[tokio::test]
async fn rust_keyword_filter_on_the_wire() -> Result<()> {
    same_verdicts_on_the_wire("rust-keyword").await
}

#[tokio::test]
async fn js_keyword_filter_on_the_wire() -> Result<()> {
    same_verdicts_on_the_wire("js-keyword").await
}

#[tokio::test]
async fn python_keyword_filter_on_the_wire() -> Result<()> {
    same_verdicts_on_the_wire("python-keyword").await
}

#[tokio::test]
async fn c_keyword_filter_on_the_wire() -> Result<()> {
    same_verdicts_on_the_wire("c-keyword").await
}
