//! A private RabbitMQ 3.10 node (AMQP, MQTT, web MQTT, management, JWT/HS256 auth) for end-to-end
//! tests: its own directory, ports and node name, and it never outlives the test process.
//!
//! # Lifeline
//!
//! The server runs under the lifeline watchdog (`crate::lifeline`): when the test process
//! closes its end ([`PrivateNode::stop`], `Drop`) or dies (exit, panic, abort, SIGKILL), the
//! watchdog sends SIGTERM to the server (a clean shutdown) and SIGKILL after [`TERM_GRACE`].

use std::{
    fs::{self, OpenOptions},
    io::Write,
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use lapin::{Connection, ConnectionProperties};
use tokio::{net::TcpStream, sync::OnceCell, time::timeout};

use crate::{
    jwt::{Issuer, JWT_KID, RESOURCE_SERVER_ID},
    lifeline, unique_id,
};

/// The real start script; `/usr/sbin/rabbitmq-server` is Debian's wrapper that switches to the
/// `rabbitmq` user and its HOME.
const SERVER_SCRIPT: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// The observer's internal (username/password) account, administrator with full rights on `/`.
pub const OBSERVER_USER: &str = "observer";
/// Password of [`OBSERVER_USER`].
pub const OBSERVER_PASSWORD: &str = "observer";

/// Budget for one start, launch to AMQP login (a fresh node takes 11-17 s on 2 busy cores).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Starts of a new node, each with fresh ports, when the server exits during start (a port taken
/// between picking and binding it).
const START_ATTEMPTS: usize = 3;
/// Time the watchdog gives the node to shut down after SIGTERM (~6 s normally) before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(30);
/// How long stopping waits for the watchdog before killing everything itself.
const STOP_TIMEOUT: Duration = Duration::from_secs(45);
/// Budget for one readiness probe (TCP connect or AMQP login).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest pause between readiness probes.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Poll interval while waiting for the watchdog to exit.
const EXIT_POLL: Duration = Duration::from_millis(50);
/// Lines of each log shown when a start fails.
const LOG_TAIL_LINES: usize = 30;

/// Set (to anything) to keep the shared node's directory (logs, mnesia) after the tests.
pub const KEEP_NODE_DIR_ENV: &str = "INBOXD_E2E_KEEP_NODE_DIR";

/// `max_message_size` and the web MQTT frame limit of every node: an operator sets them (README
/// "Operating it"); 16 MiB is above every message a test sends.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A private RabbitMQ node. Dropping it stops the node (blocking, bounded).
#[derive(Debug)]
pub struct PrivateNode {
    /// Absolute; holds config, cookie, mnesia and logs.
    dir: PathBuf,
    /// `inboxd-test-<random>@localhost`: epmd registers names machine-wide.
    node_name: String,
    ports: Ports,
    /// HS256 key of this node; random, so a token is only valid on the node it was minted for.
    jwt_secret: String,
    /// Shared nodes: the watchdog removes `dir` after the lifeline is cut.
    remove_dir_at_exit: bool,
    /// The running server; `None` while stopped.
    lifeline: Option<Lifeline>,
}

#[derive(Clone, Copy, Debug)]
struct Ports {
    amqp: u16,
    mqtt: u16,
    ws: u16,
    mgmt: u16,
    /// Erlang distribution (the default 25672 is the system node's).
    dist: u16,
}

impl Ports {
    /// Five distinct free ports, the node's for good (see [`crate::ports`]).
    fn pick() -> Result<Ports> {
        let ports = crate::ports::free_ports(5)?;
        Ok(Ports { amqp: ports[0], mqtt: ports[1], ws: ports[2], mgmt: ports[3], dist: ports[4] })
    }
}

/// Why a start failed: only a server that exited is worth another attempt with other ports.
enum BootFailure {
    Exited(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for BootFailure {
    fn from(error: anyhow::Error) -> Self {
        BootFailure::Other(error)
    }
}

impl BootFailure {
    fn into_error(self) -> anyhow::Error {
        match self {
            BootFailure::Exited(error) | BootFailure::Other(error) => error,
        }
    }
}

/// The watchdog process and our end of its stdin pipe.
#[derive(Debug)]
struct Lifeline {
    watchdog: Child,
    /// Closing it stops the node; the kernel closes it when the test process dies.
    cord: Option<ChildStdin>,
}

impl Lifeline {
    fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        self.watchdog.try_wait().context("checking the node's watchdog process")
    }

    /// Waits (blocking) up to `within` for the watchdog, hence the node, to exit.
    fn wait_exit(&mut self, within: Duration) -> Result<bool> {
        let deadline = Instant::now() + within;
        loop {
            if self.try_exit()?.is_some() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            thread::sleep(EXIT_POLL);
        }
    }

    /// Cuts the lifeline (a clean stop) and waits (blocking) until the node has exited.
    fn cut_and_wait(mut self, dir: &Path) -> Result<()> {
        drop(self.cord.take());
        if self.wait_exit(STOP_TIMEOUT)? {
            return Ok(());
        }
        if let Some(pid) = beam_pid(dir) {
            send_signal(pid, libc::SIGKILL)?;
        }
        self.watchdog.kill().context("killing the watchdog")?;
        self.watchdog.wait().context("reaping the watchdog")?;
        bail!("the node did not stop within {STOP_TIMEOUT:?}; killed it")
    }

    /// SIGKILLs beam.smp and waits (blocking) until the node has exited. The lifeline stays
    /// intact until then, so the watchdog leaves the directory in place.
    fn abort(mut self, dir: &Path) -> Result<()> {
        if let Some(pid) = beam_pid(dir) {
            send_signal(pid, libc::SIGKILL)?;
            if self.wait_exit(STOP_TIMEOUT)? {
                return Ok(());
            }
        }
        self.cut_and_wait(dir)
    }
}

impl PrivateNode {
    /// Starts a fresh node with its state under `dir` (created if missing) and waits until the
    /// observer can log in over AMQP.
    ///
    /// # Errors
    ///
    /// When the server cannot be launched, exits during start [`START_ATTEMPTS`] times, or is not
    /// ready within [`START_TIMEOUT`]; where its logs are is printed to stderr.
    pub async fn start(dir: impl AsRef<Path>) -> Result<PrivateNode> {
        Self::launch(dir.as_ref(), false, None).await
    }

    /// Launches a node; `jwt_secret` shares one signing key among the nodes of a cluster.
    pub(crate) async fn launch(dir: &Path, remove_dir_at_exit: bool, jwt_secret: Option<&str>) -> Result<PrivateNode> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
        let mut attempt = 1;
        loop {
            let mut node = PrivateNode {
                dir: dir.clone(),
                node_name: format!("{}@localhost", unique_id("inboxd-test")),
                ports: Ports::pick()?,
                jwt_secret: jwt_secret
                    .map_or_else(|| format!("inboxd-test-{}", uuid::Uuid::new_v4().simple()), str::to_owned),
                remove_dir_at_exit,
                lifeline: None,
            };
            node.write_config()?;
            match node.boot().await {
                Ok(()) => return Ok(node),
                Err(BootFailure::Exited(error)) if attempt < START_ATTEMPTS => {
                    eprintln!("inboxd-e2e: {error:#}; starting again with other ports");
                    attempt += 1;
                }
                Err(failure) => return Err(failure.into_error()),
            }
        }
    }

    /// Stops the node cleanly (SIGTERM, SIGKILL after a grace period) and waits until it is gone.
    /// Stopping a stopped node does nothing.
    pub async fn stop(&mut self) -> Result<()> {
        self.end(Lifeline::cut_and_wait).await
    }

    /// Starts the stopped (or killed) node again: same directory, node name and ports, so durable
    /// queues, persistent messages, MQTT sessions and retained messages are back.
    pub async fn start_again(&mut self) -> Result<()> {
        ensure!(self.lifeline.is_none(), "node {} is still running", self.node_name);
        self.boot().await.map_err(BootFailure::into_error)
    }

    /// Crashes the node: SIGKILL to beam.smp, no clean shutdown; then waits until it is gone.
    pub async fn kill(&mut self) -> Result<()> {
        ensure!(
            self.lifeline.is_some() && beam_pid(&self.dir).is_some(),
            "node {} has no running beam.smp",
            self.node_name
        );
        self.end(Lifeline::abort).await
    }

    /// Ends the running server with `how`, off the async runtime (it blocks for seconds).
    async fn end(&mut self, how: fn(Lifeline, &Path) -> Result<()>) -> Result<()> {
        let Some(lifeline) = self.lifeline.take() else {
            return Ok(());
        };
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || how(lifeline, &dir))
            .await
            .context("the task stopping the node panicked")?
            .with_context(|| format!("stopping node {}", self.node_name))
    }

    /// `amqp://observer:observer@127.0.0.1:PORT/%2f`
    pub fn amqp_url(&self) -> String {
        format!("amqp://{OBSERVER_USER}:{OBSERVER_PASSWORD}@127.0.0.1:{}/%2f", self.ports.amqp)
    }

    /// MQTT (TCP) port on 127.0.0.1.
    pub fn mqtt_port(&self) -> u16 {
        self.ports.mqtt
    }

    /// Web MQTT port on 127.0.0.1 (path `/ws`).
    pub fn ws_port(&self) -> u16 {
        self.ports.ws
    }

    /// Management HTTP API port on 127.0.0.1 (observer basic auth).
    pub fn mgmt_port(&self) -> u16 {
        self.ports.mgmt
    }

    /// `http://127.0.0.1:PORT`
    pub fn mgmt_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.mgmt)
    }

    /// The node's HS256 signing key.
    pub fn jwt_secret(&self) -> &str {
        &self.jwt_secret
    }

    /// Key id of [`Self::jwt_secret`].
    pub fn jwt_kid(&self) -> &str {
        JWT_KID
    }

    /// `aud` of valid tokens and prefix of their scopes.
    pub fn resource_server_id(&self) -> &str {
        RESOURCE_SERVER_ID
    }

    /// Mints tokens this node accepts.
    pub fn issuer(&self) -> Issuer {
        Issuer::new(&self.jwt_secret, JWT_KID)
    }

    /// The node's state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `inboxd-test-<random>@localhost`
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The node's own log (the server's stdout and stderr go to `log/startup.log`).
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("log").join(format!("{}.log", self.node_name))
    }

    fn etc(&self) -> PathBuf {
        self.dir.join("etc")
    }

    /// Writes everything the node reads at boot (see shared/notes/rabbitmq.md).
    fn write_config(&self) -> Result<()> {
        let etc = self.etc();
        let home = self.dir.join("home");
        for sub in [&etc, &home, &self.dir.join("mnesia"), &self.dir.join("log")] {
            fs::create_dir_all(sub).with_context(|| format!("creating {}", sub.display()))?;
        }
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 700 {}", home.display()))?;
        let cookie = home.join(".erlang.cookie");
        if !cookie.exists() {
            let value = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&cookie)
                .and_then(|mut file| file.write_all(value.as_bytes()))
                .with_context(|| format!("writing {}", cookie.display()))?;
        }

        let Ports { amqp, mqtt, ws, mgmt, dist: _ } = self.ports;
        let definitions = etc.join("definitions.json");
        let rabbitmq_conf = format!(
            "listeners.tcp.1 = 127.0.0.1:{amqp}\n\
             mqtt.listeners.tcp.1 = 127.0.0.1:{mqtt}\n\
             mqtt.allow_anonymous = false\n\
             mqtt.vhost = /\n\
             mqtt.exchange = amq.topic\n\
             web_mqtt.tcp.port = {ws}\n\
             web_mqtt.tcp.ip = 127.0.0.1\n\
             management.tcp.port = {mgmt}\n\
             management.tcp.ip = 127.0.0.1\n\
             auth_backends.1 = rabbit_auth_backend_oauth2\n\
             auth_backends.2 = rabbit_auth_backend_internal\n\
             loopback_users = none\n\
             load_definitions = {}\n\
             log.file.level = info\n\
             log.console = false\n\
             max_message_size = {MAX_MESSAGE_BYTES}\n\
             web_mqtt.ws_opts.max_frame_size = {MAX_MESSAGE_BYTES}\n",
            definitions.display()
        );
        // 3.10's rabbitmq.conf takes only PEM signing keys; a symmetric key goes here. The secret
        // and kid are plain ASCII without quotes or backslashes, so no Erlang escaping is needed.
        let advanced_config = format!(
            "[\n {{rabbitmq_auth_backend_oauth2, [\n   \
             {{resource_server_id, <<\"{RESOURCE_SERVER_ID}\">>}},\n   \
             {{key_config, [\n     \
             {{default_key, <<\"{JWT_KID}\">>}},\n     \
             {{algorithms, [<<\"HS256\">>]}},\n     \
             {{signing_keys, #{{\n       \
             <<\"{JWT_KID}\">> => {{map, #{{<<\"kty\">> => <<\"MAC\">>,\n          \
             <<\"alg\">> => <<\"HS256\">>,\n          \
             <<\"value\">> => <<\"{}\">>}}}}\n     \
             }}}}\n   \
             ]}}\n \
             ]}}\n].\n",
            self.jwt_secret
        );
        // Imported at every boot; with definitions on the first boot no `guest` user is created.
        let definitions_json = serde_json::json!({
            "vhosts": [{"name": "/"}],
            "users": [{"name": OBSERVER_USER, "password": OBSERVER_PASSWORD, "tags": ["administrator"]}],
            "permissions": [{"user": OBSERVER_USER, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
        });
        let files = [
            // Our own, empty env file: the system's pins NODENAME and ERL_FLAGS.
            ("rabbitmq-env.conf", String::new()),
            ("rabbitmq.conf", rabbitmq_conf),
            ("advanced.config", advanced_config),
            ("definitions.json", format!("{definitions_json:#}\n")),
            (
                "enabled_plugins",
                "[rabbitmq_management,rabbitmq_mqtt,rabbitmq_web_mqtt,rabbitmq_auth_backend_oauth2,\
                 rabbitmq_consistent_hash_exchange].\n"
                    .to_owned(),
            ),
        ];
        for (name, contents) in files {
            let path = etc.join(name);
            fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// The server's environment: every path and name points into `dir`.
    pub(crate) fn server_env(&self) -> Vec<(&'static str, String)> {
        let path = |sub: &str| self.dir.join(sub).display().to_string();
        vec![
            ("HOME", path("home")),
            ("RABBITMQ_NODENAME", self.node_name.clone()),
            ("RABBITMQ_CONF_ENV_FILE", path("etc/rabbitmq-env.conf")),
            ("RABBITMQ_CONFIG_FILE", path("etc/rabbitmq.conf")),
            ("RABBITMQ_ADVANCED_CONFIG_FILE", path("etc/advanced.config")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", path("etc/enabled_plugins")),
            ("RABBITMQ_MNESIA_BASE", path("mnesia")),
            ("RABBITMQ_LOG_BASE", path("log")),
            ("RABBITMQ_PID_FILE", path("rabbitmq.pid")),
            ("RABBITMQ_DIST_PORT", self.ports.dist.to_string()),
            ("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}".to_owned()),
        ]
    }

    fn spawn_watchdog(&self) -> Result<Lifeline> {
        let startup_log = self.dir.join("log").join("startup.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&startup_log)
            .with_context(|| format!("opening {}", startup_log.display()))?;
        let cleanup = self.remove_dir_at_exit.then_some(self.dir.as_path());
        let mut command = lifeline::watchdog("TERM", TERM_GRACE, cleanup);
        command.arg(SERVER_SCRIPT);
        // Nothing of the caller's RabbitMQ or Erlang setup may leak into the private node;
        // NOTIFY_SOCKET would make the script believe it runs under systemd.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("RABBITMQ_") || key.starts_with("ERL_") || key == "NOTIFY_SOCKET" {
                command.env_remove(key.as_ref());
            }
        }
        command
            .envs(self.server_env())
            .stdin(Stdio::piped())
            .stdout(log.try_clone().context("duplicating the startup log handle")?)
            .stderr(log);
        let mut watchdog = command.spawn().with_context(|| format!("launching {SERVER_SCRIPT} under /bin/sh"))?;
        let cord = watchdog.stdin.take();
        Ok(Lifeline { watchdog, cord })
    }

    /// Launches the server and waits until it is ready; on failure the server is stopped again.
    async fn boot(&mut self) -> Result<(), BootFailure> {
        self.lifeline = Some(self.spawn_watchdog()?);
        let result = self.wait_ready().await;
        if let Err(BootFailure::Exited(error) | BootFailure::Other(error)) = &result {
            eprintln!(
                "inboxd-e2e: RabbitMQ node {} failed to start: {error:#}\n\
                 inboxd-e2e: its state and logs are in {}\n{}",
                self.node_name,
                self.dir.join("log").display(),
                self.log_tails()
            );
            // A kill, not a clean stop: that would remove a shared node's directory, logs and all.
            if let Err(error) = self.end(Lifeline::abort).await {
                eprintln!("inboxd-e2e: {error:#}");
            }
        }
        result
    }

    /// Ready means: the AMQP listener (the last to open) accepts the observer's login, and the
    /// MQTT, web MQTT and management listeners accept connections.
    async fn wait_ready(&mut self) -> Result<(), BootFailure> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut backoff = FIRST_BACKOFF;
        let mut last_error = anyhow!("the AMQP port {} never opened", self.ports.amqp);
        loop {
            let lifeline = self.lifeline.as_mut().context("node not launched")?;
            if lifeline.try_exit()?.is_some() {
                return Err(BootFailure::Exited(anyhow!("the server exited during start")));
            }
            if port_accepts(self.ports.amqp).await {
                match observer_login(&self.amqp_url()).await {
                    Ok(()) => break,
                    Err(error) => last_error = error,
                }
            }
            if Instant::now() + backoff > deadline {
                return Err(BootFailure::Other(last_error.context(format!("not ready within {START_TIMEOUT:?}"))));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        for (listener, port) in
            [("MQTT", self.ports.mqtt), ("web MQTT", self.ports.ws), ("management", self.ports.mgmt)]
        {
            if !port_accepts(port).await {
                return Err(BootFailure::Other(anyhow!("the {listener} port {port} is closed although AMQP is up")));
            }
        }
        Ok(())
    }

    /// The last lines of the node's log and of the startup log, for a failed start.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for file in [self.log_file(), self.dir.join("log").join("startup.log")] {
            let Ok(text) = fs::read_to_string(&file) else {
                continue;
            };
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            out.push_str(&format!("--- tail of {}\n", file.display()));
            for line in tail {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        if let Some(lifeline) = self.lifeline.take()
            && let Err(error) = lifeline.cut_and_wait(&self.dir)
        {
            eprintln!("inboxd-e2e: stopping node {}: {error:#}", self.node_name);
        }
    }
}

/// The node of this test binary, started on first use and shared by all its tests (use your own
/// [`PrivateNode`] to stop, restart or kill a node). It lives in `target/e2e-nodes/<random>` and
/// is stopped by the lifeline when the test binary exits, which also removes that directory
/// unless [`KEEP_NODE_DIR_ENV`] is set. It holds no connection, so any runtime may use it.
///
/// # Errors
///
/// When the node did not start; every later call returns the same error without trying again.
pub async fn shared_node() -> Result<&'static PrivateNode> {
    static SHARED: OnceCell<Result<PrivateNode, String>> = OnceCell::const_new();
    SHARED
        .get_or_init(|| async {
            let dir = nodes_root().join(unique_id("node"));
            let keep = std::env::var_os(KEEP_NODE_DIR_ENV).is_some();
            PrivateNode::launch(&dir, !keep, None).await.map_err(|error| format!("{error:#}"))
        })
        .await
        .as_ref()
        .map_err(|error| anyhow!("the shared RabbitMQ node did not start: {error}"))
}

/// `$CARGO_TARGET_DIR/e2e-nodes`, else `target/e2e-nodes` in the workspace.
fn nodes_root() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("e2e-nodes")
}

async fn port_accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    matches!(timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await, Ok(Ok(_)))
}

async fn observer_login(url: &str) -> Result<()> {
    let connection = timeout(PROBE_TIMEOUT, Connection::connect(url, ConnectionProperties::default()))
        .await
        .context("AMQP login timed out")?
        .context("AMQP login as the observer")?;
    connection.close(200, "ready".into()).await.context("closing the probe connection")
}

/// The pid in the node's pid file, if that process is this node's beam.smp (its command line has
/// erl's `-home DIR/home`, unique to the directory).
fn beam_pid(dir: &Path) -> Option<libc::pid_t> {
    let pid: libc::pid_t = fs::read_to_string(dir.join("rabbitmq.pid")).ok()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let home = dir.join("home");
    let home = home.as_os_str().as_encoded_bytes();
    cmdline.split(|byte| *byte == 0).any(|arg| arg == home).then_some(pid)
}

fn send_signal(pid: libc::pid_t, signal: libc::c_int) -> Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error()).with_context(|| format!("kill -{signal} {pid}"))
    }
}
