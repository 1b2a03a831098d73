//! Hostile input against the plugin chain: deadlines under load, hold keeps modified bodies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use inboxd_e2e::daemon::{cli, env_for};
use serde_json::json;

use crate::util::{Chat, PluginSetup, expect_on, next};

fn inbox(chat: &Chat, owner: &str, with: &str) -> String {
    chat.topic(&format!("users/{owner}/messages/{with}/clientadded"))
}

/// `inboxd <args>` (the real binary) on the chat's broker with the test's plugin config.
async fn held_command(chat: &Chat, plugins: &PluginSetup, args: &[&str]) -> Result<String> {
    let mut env = env_for(chat.node, &chat.app);
    env.insert("INBOXD_CONFIG".into(), plugins.config.display().to_string());
    let output = cli(args, &env).await?;
    ensure!(output.status.success(), "inboxd {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The moderator releases every held message (the one place a release is driven from here).
async fn release_all_held(chat: &Chat, plugins: &PluginSetup) -> Result<()> {
    held_command(chat, plugins, &["held", "release", "--all"]).await.map(drop)
}

/// Issue 14, "hold keeps the policy's work": `[redactor, moderator]` where the moderator holds
/// parks the redacted body, so what a release delivers is redacted too.
#[tokio::test]
async fn a_release_delivers_the_body_as_the_chain_modified_it() -> Result<()> {
    let plugins = PluginSetup::new(
        &["rust-redactor", "rust-hostile"],
        r#"
[[plugins.chain]]
name = "redactor"
file = "rust-redactor.wasm"

[[plugins.chain]]
name = "moderation"
file = "rust-hostile.wasm"
config = { behaviour = "hold", trigger = "REVIEW" }
"#,
    )?;
    let chat = Chat::builder().listen().plugins(&plugins).start().await?;
    let mut alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    let carol = chat.user("carol").await?;

    let secret = "alice@example.com";
    alice.publish_json(&alice.outgoing_topic("bob"), &json!({"text": format!("REVIEW: mail {secret}")})).await?;
    // The daemon goes on: another user's next message is delivered, and is the first bob sees.
    carol.publish_json(&carol.outgoing_topic("bob"), &json!({"text": "plain"})).await?;
    ensure!(expect_on(&mut bob, &inbox(&chat, "bob", "carol")).await?["text"] == "plain", "carol's message");

    let listing = held_command(&chat, &plugins, &["held", "list"]).await?;
    ensure!(listing.contains("moderation") && listing.contains("held for review"), "held list: {listing}");
    ensure!(listing.contains("[redacted]") && !listing.contains(secret), "the parked body is not redacted: {listing}");

    release_all_held(&chat, &plugins).await?;
    for (user, topic, status) in
        [(&mut bob, inbox(&chat, "bob", "alice"), 150), (&mut alice, inbox(&chat, "alice", "bob"), 100)]
    {
        let copy = expect_on(user, &topic).await?;
        let text = copy["text"].as_str().context("text")?;
        ensure!(text == "REVIEW: mail [redacted]" && copy["status"] == status, "released copy: {copy}");
        ensure!(copy["sender"] == "alice", "released copy: {copy}");
    }
    let after = held_command(&chat, &plugins, &["held", "list"]).await?;
    ensure!(!after.contains("held for review"), "still held after release: {after}");
    chat.assert_ready().await?;
    chat.daemon.stop().await
}

/// The calling thread, and every thread it starts from now on (the in-process daemon's workers
/// and epoch ticker among them), pinned to the CPU it runs on at nice 19, sharing that CPU with
/// `hogs` spinning threads of nice 0 once [`Starvation::start`] is called. The hogs stop when
/// this is dropped; the renice and pinning end with the test's thread.
struct Starvation {
    go: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    hogs: Vec<JoinHandle<()>>,
}

impl Starvation {
    fn prepare(hogs: usize) -> Result<Starvation> {
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).context("the current CPU")?;
        let (go, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        // Started before the renice, so they keep nice 0.
        let hogs = (0..hogs)
            .map(|_| {
                let (go, stop) = (Arc::clone(&go), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let pinned = pin_to(cpu);
                    while pinned.is_ok() && !go.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    let mut n = 0u64;
                    while pinned.is_ok() && !stop.load(Ordering::Relaxed) {
                        n = std::hint::black_box(n.wrapping_add(1));
                    }
                })
            })
            .collect();
        let starvation = Starvation { go, stop, hogs };
        pin_to(cpu)?;
        // SAFETY: gettid has no preconditions; setpriority on a thread id renices that thread only.
        let niced = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
        ensure!(niced == 0, "renicing the test thread: {}", std::io::Error::last_os_error());
        Ok(starvation)
    }

    fn start(&self) {
        self.go.store(true, Ordering::Relaxed);
    }
}

impl Drop for Starvation {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for hog in self.hogs.drain(..) {
            let _ = hog.join();
        }
    }
}

/// Pins the calling thread (and the threads it starts later) to `cpu`.
fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity (0 = this thread)
    // get valid pointers to it.
    let pinned = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    ensure!(pinned == 0, "pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Issue 14, "load is not a verdict": the benchmark's 3-plugin chain with a CPU budget of 5 ms
/// per call, in a daemon whose threads get a sliver of one CPU next to two hogs (descheduled
/// mid-call for longer than that, often). Every message is delivered; none comes back FAILED.
#[tokio::test]
async fn a_starved_daemon_fails_no_message_of_the_example_chain() -> Result<()> {
    const MESSAGES: usize = 300;
    let plugins = PluginSetup::new(
        &["rust-redactor", "rust-blocklist", "rust-ratelimit"],
        r#"
[[plugins.chain]]
name = "redactor"
file = "rust-redactor.wasm"
hooks = ["on-message"]
deadline_ms = 5

[[plugins.chain]]
name = "blocklist"
file = "rust-blocklist.wasm"
hooks = ["on-deliver"]
deadline_ms = 5
config = { blocked = { nobody = ["mallory"] } }

[[plugins.chain]]
name = "ratelimit"
file = "rust-ratelimit.wasm"
hooks = ["on-message"]
deadline_ms = 5
config = { max = 4000000000, window_ms = 60000 }
"#,
    )?;
    // The broker (started once per test binary) must not inherit the starvation.
    inboxd_e2e::shared_node().await.context("setup failed: shared node")?;
    let starvation = Starvation::prepare(2)?;
    let chat = Chat::builder().listen().plugins(&plugins).start().await?;
    let mut alice = chat.user("alice").await?;
    let mut bob = chat.user("bob").await?;
    starvation.start();
    for n in 0..MESSAGES {
        alice
            .publish_json(&alice.outgoing_topic("bob"), &json!({"text": format!("{n}: mail alice@example.com")}))
            .await?;
    }
    // Alice gets a copy of each, delivered (100) or FAILED (-100): look at hers first.
    let within = Duration::from_secs(300);
    let ours = alice.recv_n(MESSAGES, within).await.context("alice's copies")?;
    let failed = ours.iter().filter(|copy| copy.json().is_ok_and(|body| body["status"] == -100)).count();
    ensure!(
        failed == 0,
        "{failed} of {MESSAGES} messages FAILED, e.g. {:?}",
        ours.iter().find_map(|c| c.json().ok().filter(|b| b["status"] == -100))
    );
    let theirs = bob.recv_n(MESSAGES, within).await.context("bob's copies")?;
    drop(starvation);
    for (owner, copies, status) in [("bob", &theirs, 150), ("alice", &ours, 100)] {
        for copy in copies {
            let body = copy.json()?;
            ensure!(body["status"] == status, "{owner} got {body}");
            ensure!(body["text"].as_str().is_some_and(|t| t.ends_with(": mail [redacted]")), "{owner} got {body}");
        }
    }
    // Still ready: another user's next message is delivered.
    let carol = chat.user("carol").await?;
    carol.publish_json(&carol.outgoing_topic("bob"), &json!({"text": "after the load"})).await?;
    let (topic, body) = next(&mut bob).await?;
    ensure!(topic == inbox(&chat, "bob", "carol") && body["text"] == "after the load", "bob got {topic}: {body}");
    chat.assert_ready().await?;
    chat.daemon.stop().await
}
