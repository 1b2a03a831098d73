//! The dev run behind `./scripts/run.sh`: a private RabbitMQ node with MQTT + JWT auth under
//! target/dev-node, and `inboxd run` against it; prints tokens to chat with; Ctrl-C stops both.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result};
use inboxd_e2e::PrivateNode;
use inboxd_e2e::jwt::TokenOptions;
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize()?;
    let config = std::env::args().nth(1).map_or_else(|| root.join("examples/dev.toml"), PathBuf::from);
    let app = "tilechat";
    eprintln!("inboxd-dev: starting a private RabbitMQ node in target/dev-node (15-30 s)");
    let mut node = PrivateNode::start(root.join("target/dev-node")).await.context("starting the private node")?;
    let issuer = node.issuer();
    let token = |user: &str| issuer.mint(user, app, &TokenOptions::default());
    let (alice, bob) = (token("alice")?, token("bob")?);
    let port = node.mqtt_port();
    eprintln!(
        "\ninboxd-dev: broker ready: AMQP {amqp}, MQTT 127.0.0.1:{port}, management {mgmt} (observer/observer)\n\
         Try, in two other terminals:\n  \
         mosquitto_sub -p {port} -u bob -P '{bob}' -q 1 -v -t 'apps/{app}/users/bob/#'\n  \
         mosquitto_pub -p {port} -u alice -P '{alice}' -q 1 -t 'apps/{app}/outgoing/users/alice/messages/bob/outgoing' \
         -m '{{\"text\":\"hi bob, mail me at alice@example.com\"}}'\n\
         Then bob's history: curl -H 'Authorization: JWT {bob}' \
         http://127.0.0.1:9464/api/{app}/bob/conversations/alice/messages\n",
        amqp = node.amqp_url(),
        mgmt = node.mgmt_url(),
    );
    let binary = std::env::current_exe()?.with_file_name("inboxd");
    let mut daemon = Command::new(&binary)
        .args(["run", "--config"])
        .arg(&config)
        .current_dir(&root)
        .env("INBOXD_BROKER_URL", node.amqp_url())
        // History next to the node, readable through the history API with the users' tokens.
        .env("INBOXD_STORE_URL", format!("sqlite://{}", root.join("target/dev-history.db").display()))
        .env("INBOXD_AUTH_SECRET", node.jwt_secret())
        .env("INBOXD_AUTH_KEY_ID", node.jwt_kid())
        .env("INBOXD_AUTH_RESOURCE_SERVER_ID", node.resource_server_id())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        status = daemon.wait() => eprintln!("inboxd-dev: inboxd exited: {:?}", status?),
        _ = tokio::signal::ctrl_c() => eprintln!("inboxd-dev: stopping"),
        _ = term.recv() => eprintln!("inboxd-dev: stopping"),
    }
    if let Some(pid) = daemon.id() {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        daemon.wait().await?;
    }
    node.stop().await
}
