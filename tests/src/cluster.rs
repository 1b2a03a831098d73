//! A private RabbitMQ cluster: several [`PrivateNode`]s with one Erlang cookie and one JWT key,
//! joined with `rabbitmqctl join_cluster`, for the scale-out tests. Each node keeps its own
//! directory, ports and name, and dies with the test process like any private node.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tokio::process::Command;

use crate::PrivateNode;

/// The CLI tool beside the real server script (not Debian's wrapper in /usr/sbin).
const CTL_SCRIPT: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
/// Budget of one `rabbitmqctl` command (start_app of a joining node takes seconds).
const CTL_TIMEOUT: Duration = Duration::from_secs(120);

/// Nodes of one cluster; dropping it stops them all, then removes their directories.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<PrivateNode>,
    /// Declared after `nodes`, so it is removed after they stopped.
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `size` fresh nodes side by side in a temporary directory, then joins every node to
    /// the first.
    ///
    /// # Errors
    /// When a node does not start or does not join.
    pub async fn start(size: usize) -> Result<Cluster> {
        ensure!(size >= 1, "a cluster has at least one node");
        let dir = tempfile::Builder::new().prefix("inboxd-cluster-").tempdir().context("creating the cluster dir")?;
        let root = dir.path().to_owned();
        let cookie = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
        let secret = format!("inboxd-test-{}", uuid::Uuid::new_v4().simple());
        let launches = (0..size).map(|i| {
            let dir = root.join(format!("node{i}"));
            let (cookie, secret) = (cookie.clone(), secret.clone());
            async move {
                write_cookie(&dir, &cookie)?;
                PrivateNode::launch(&dir, false, Some(&secret)).await
            }
        });
        let nodes = futures_util::future::join_all(launches).await.into_iter().collect::<Result<Vec<_>>>()?;
        let cluster = Cluster { nodes, _dir: dir };
        let first = cluster.nodes[0].node_name().to_owned();
        for node in &cluster.nodes[1..] {
            ctl(node, &["stop_app"]).await?;
            ctl(node, &["join_cluster", &first]).await?;
            ctl(node, &["start_app"]).await?;
            ctl(node, &["await_startup"]).await?;
        }
        let status = ctl(&cluster.nodes[0], &["cluster_status", "--formatter", "json"]).await?;
        for node in &cluster.nodes {
            ensure!(status.contains(node.node_name()), "{} is not in the cluster: {status}", node.node_name());
        }
        Ok(cluster)
    }

    /// Node `index`.
    pub fn node(&self, index: usize) -> &PrivateNode {
        &self.nodes[index]
    }

    /// Node `index`, to stop or start it.
    pub fn node_mut(&mut self, index: usize) -> &mut PrivateNode {
        &mut self.nodes[index]
    }

    /// Every node's AMQP URL, in node order.
    pub fn amqp_urls(&self) -> Vec<String> {
        self.nodes.iter().map(PrivateNode::amqp_url).collect()
    }

    /// Runs `rabbitmqctl` against node `index` (e.g. `list_queues`); its standard output.
    ///
    /// # Errors
    /// When the command fails or hangs.
    pub async fn ctl(&self, index: usize, args: &[&str]) -> Result<String> {
        ctl(&self.nodes[index], args).await
    }
}

/// Every node of a cluster needs the same cookie, in place before its first boot.
fn write_cookie(dir: &Path, cookie: &str) -> Result<()> {
    let home = dir.join("home");
    fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700))?;
    let path = home.join(".erlang.cookie");
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&path)
        .and_then(|mut file| file.write_all(cookie.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

async fn ctl(node: &PrivateNode, args: &[&str]) -> Result<String> {
    let mut command = Command::new(CTL_SCRIPT);
    command.arg("-n").arg(node.node_name()).args(args).envs(node.server_env()).kill_on_drop(true);
    let output = tokio::time::timeout(CTL_TIMEOUT, command.output())
        .await
        .with_context(|| format!("rabbitmqctl {} hung", args.join(" ")))?
        .with_context(|| format!("running {CTL_SCRIPT}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "rabbitmqctl -n {} {} failed: {}{}",
        node.node_name(),
        args.join(" "),
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}
