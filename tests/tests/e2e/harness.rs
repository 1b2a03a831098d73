//! The harness itself: a node keeps its durable state over a clean restart and over a crash,
//! persistent MQTT sessions reconnect on their own, and a node never outlives its test process.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use inboxd_e2e::{
    ConnectOptions, MqttUser, PrivateNode,
    amqp::{Observer, TOPIC_EXCHANGE},
    eventually, unique_id,
};
use lapin::{
    options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde_json::{Value, json};

/// Bound for every wait on a running broker.
const WAIT: Duration = Duration::from_secs(10);
/// Bound for the lifeline helper's node to come up (a start may take up to 120 s).
const HELPER_START: Duration = Duration::from_secs(150);
/// Bound for the watchdog to stop an orphaned node (a clean stop takes ~6 s).
const ORPHAN_STOP: Duration = Duration::from_secs(60);
/// Tells [`lifeline_helper`] where to start its node; unset, it does nothing.
const LIFELINE_DIR_ENV: &str = "INBOXD_E2E_LIFELINE_DIR";

#[tokio::test]
async fn restart_and_crash_keep_durable_state_and_sessions() -> Result<()> {
    let dir = tempfile::tempdir().context("creating a node directory")?;
    let mut node = PrivateNode::start(dir.path()).await?;
    let app = unique_id("app");

    let durable = unique_id("inboxd-e2e-durable");
    let probe_key = format!("inboxd-e2e.{durable}");
    let kept = json!({"kept": true});
    {
        let observer = Observer::connect(&node).await?;
        let channel = observer.channel();
        channel
            .queue_declare(
                durable.as_str().into(),
                QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                durable.as_str().into(),
                TOPIC_EXCHANGE.into(),
                probe_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        observer.publish_json(&probe_key, &kept).await?;
    }

    let persistent = ConnectOptions { clean_session: false, ..ConnectOptions::default() };
    let mut bob = MqttUser::connect(&node, "bob", &app, persistent).await?;
    bob.subscribe_inbox().await?;

    let mut delivered = Vec::new();
    for crash in [false, true] {
        if crash {
            node.kill().await?;
        } else {
            node.stop().await?;
        }
        bob.wait_disconnected(WAIT).await?;
        node.start_again().await?;
        bob.wait_connected(WAIT).await?;

        let body = json!({"text": "after the restart", "crash": crash});
        Observer::connect(&node)
            .await?
            .publish_json(&format!("apps.{app}.users.bob.messages.alice.clientadded"), &body)
            .await?;
        loop {
            let got = bob
                .recv(WAIT)
                .await
                .with_context(|| format!("bob's session got nothing after the restart (crash: {crash})"))?;
            ensure!(got.topic == format!("apps/{app}/users/bob/messages/alice/clientadded"), "topic {}", got.topic);
            let got = got.json()?;
            if got == body {
                break;
            }
            // At least once: a crash may lose the broker's record of an ack, never a message.
            ensure!(crash && delivered.contains(&got), "unexpected payload {got}");
        }
        delivered.push(body);
    }

    let observer = Observer::connect(&node).await?;
    let message = observer
        .channel()
        .basic_get(durable.as_str().into(), BasicGetOptions { no_ack: true })
        .await?
        .context("the persistent message was lost")?;
    ensure!(serde_json::from_slice::<Value>(&message.delivery.data)? == kept);
    drop(observer);
    bob.disconnect().await?;
    node.stop().await
}

/// Not a test: the process [`lifeline_stops_the_node_when_the_test_process_dies`] kills.
#[tokio::test]
#[ignore = "helper process of lifeline_stops_the_node_when_the_test_process_dies"]
async fn lifeline_helper() -> Result<()> {
    let Some(dir) = std::env::var_os(LIFELINE_DIR_ENV) else {
        return Ok(());
    };
    let dir = Path::new(&dir);
    let node = PrivateNode::start(dir).await?;
    fs::write(dir.join("ready"), node.node_name()).context("writing the ready marker")?;
    // Killed long before this ends.
    tokio::time::sleep(Duration::from_secs(600)).await;
    Ok(())
}

#[tokio::test]
async fn lifeline_stops_the_node_when_the_test_process_dies() -> Result<()> {
    let dir = tempfile::tempdir().context("creating a node directory")?;
    let dir = dir.path().canonicalize()?;
    let helper_log = dir.join("helper.log");
    let mut helper = Command::new(std::env::current_exe()?)
        .args(["harness::lifeline_helper", "--exact", "--ignored"])
        .env(LIFELINE_DIR_ENV, &dir)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&helper_log)?)
        .spawn()
        .context("starting the helper test process")?;

    eventually(HELPER_START, "the helper's node up", || {
        let status = helper.try_wait();
        let ready = dir.join("ready").exists();
        let log = &helper_log;
        async move {
            if let Some(status) = status? {
                let log = fs::read_to_string(log).unwrap_or_default();
                // Not worth waiting for: fails again on every check, until the deadline.
                bail!("the helper exited ({status}) before its node was up:\n{log}");
            }
            ensure!(ready, "no ready marker yet");
            Ok(())
        }
    })
    .await?;
    let beam = node_beam(&dir).context("no beam.smp for the helper's node")?;

    helper.kill().context("SIGKILL to the helper")?;
    helper.wait()?;

    let stopped = eventually(ORPHAN_STOP, format!("beam.smp {beam} gone after its test process"), || async {
        ensure!(node_beam(&dir) != Some(beam), "still running");
        Ok(())
    })
    .await;
    if stopped.is_err() {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(beam, libc::SIGKILL) };
    }
    stopped
}

/// The pid of the node in `dir`, if it runs: the pid file's process, if its command line has
/// erl's `-home DIR/home`.
fn node_beam(dir: &Path) -> Option<libc::pid_t> {
    let pid = fs::read_to_string(dir.join("rabbitmq.pid")).ok()?;
    let pid: libc::pid_t = pid.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let home = dir.join("home");
    cmdline.split(|byte| *byte == 0).any(|arg| arg == home.as_os_str().as_encoded_bytes()).then_some(pid)
}
