//! inboxd under test: in-process (the library's `run`, for protocol tests) or as the real
//! binary (for crash and signal tests), configured only through environment variables.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use inboxd::config::Config;
use inboxd::plugin::Compiler;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{PrivateNode, eventually};

/// How long a daemon gets to start consuming.
const CONSUMING_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon's HTTP listener gets to give the status a test waits for.
const HTTP_WAIT: Duration = Duration::from_secs(60);

/// Where [`Process::spawn_logged`] puts the daemon's log, in its working directory.
const LOG_FILE: &str = "inboxd.log";

/// `[held] secret` of every test daemon and `inboxd held` command (see [`env_for`]).
pub const HELD_SECRET: &str = "inboxd-e2e-held-secret-not-for-production";

/// The environment that points inboxd at `node` for `app` (the keys a test may extend).
pub fn env_for(node: &PrivateNode, app: &str) -> HashMap<String, String> {
    HashMap::from([
        ("INBOXD_BROKER_URL".to_owned(), node.amqp_url()),
        ("INBOXD_APP_ID".to_owned(), app.to_owned()),
        ("INBOXD_BROKER_RECONNECT_MAX_MS".to_owned(), "2000".to_owned()),
        // Tests run many daemons at once: no HTTP listener unless a test asks for one.
        ("INBOXD_HTTP_ADDRESS".to_owned(), String::new()),
        // Nothing persisted unless a test asks for a store (see `db::TestDb`).
        ("INBOXD_STORE_URL".to_owned(), "none".to_owned()),
        // Held messages are signed, so a test can hold and release them.
        ("INBOXD_HELD_SECRET".to_owned(), HELD_SECRET.to_owned()),
    ])
}

/// An inboxd running inside the test process.
pub struct InProcess {
    shutdown: CancellationToken,
    task: JoinHandle<Result<()>>,
}

impl InProcess {
    /// Starts inboxd for `app` with `env` (see [`env_for`]) and waits until it consumes.
    ///
    /// # Errors
    /// When the config is refused or the daemon does not start consuming in time.
    pub async fn start(node: &PrivateNode, env: HashMap<String, String>) -> Result<InProcess> {
        InProcess::start_with_file(node, env, None).await
    }

    /// Like [`InProcess::start`], reading (and watching, for plugin reloads) a config file too.
    ///
    /// # Errors
    /// When the config is refused, the plugin chain does not load, or the daemon does not consume.
    pub async fn start_with_file(
        node: &PrivateNode,
        env: HashMap<String, String>,
        file: Option<&Path>,
    ) -> Result<InProcess> {
        let config = Config::load(file, &env).context("test config")?;
        let queue = consumed_queue(&config);
        let shutdown = CancellationToken::new();
        let mut task = tokio::spawn(inboxd::daemon::serve(
            config,
            file.map(Path::to_path_buf),
            env,
            None,
            Compiler::InProcess,
            shutdown.clone(),
        ));
        tokio::select! {
            waited = wait_consuming(node, &queue, 1) => waited?,
            ended = &mut task => bail!("inboxd ended at start: {:?}", ended.context("inboxd panicked")?),
        }
        Ok(InProcess { shutdown, task })
    }

    /// Requests a graceful shutdown and waits for it.
    ///
    /// # Errors
    /// When the daemon returned an error or panicked.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        (&mut self.task).await.context("inboxd task panicked")?
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The real `inboxd` binary as a child process (killed when dropped), in a working directory
/// of its own (where the default store file goes).
pub struct Process {
    child: Child,
    dir: tempfile::TempDir,
}

impl Process {
    /// Spawns `inboxd run` with exactly `env` added to a clean environment, and waits until it consumes.
    ///
    /// # Errors
    /// When the binary is missing, fails to start, or does not start consuming in time.
    pub async fn spawn(node: &PrivateNode, queue: &str, env: &HashMap<String, String>) -> Result<Process> {
        Process::spawn_with(node, queue, env, false).await
    }

    /// Like [`Process::spawn`], its log going to a file of its own (see [`Process::log`]) instead
    /// of the test's stderr.
    ///
    /// # Errors
    /// As [`Process::spawn`].
    pub async fn spawn_logged(node: &PrivateNode, queue: &str, env: &HashMap<String, String>) -> Result<Process> {
        Process::spawn_with(node, queue, env, true).await
    }

    async fn spawn_with(
        node: &PrivateNode,
        queue: &str,
        env: &HashMap<String, String>,
        logged: bool,
    ) -> Result<Process> {
        let binary = binary()?;
        let dir = tempfile::Builder::new().prefix("inboxd-run-").tempdir()?;
        let stderr = match logged {
            true => Stdio::from(std::fs::File::create(dir.path().join(LOG_FILE)).context("creating inboxd's log")?),
            false => Stdio::inherit(),
        };
        let child = Command::new(&binary)
            .arg("run")
            .current_dir(dir.path())
            .env_clear()
            .envs(env)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let mut process = Process { child, dir };
        tokio::select! {
            waited = wait_consuming(node, queue, 1) => waited?,
            status = process.child.wait() => bail!("inboxd exited at start: {:?}", status?),
        }
        Ok(process)
    }

    /// What a process started with [`Process::spawn_logged`] logged so far.
    ///
    /// # Errors
    /// When the log cannot be read.
    pub fn log(&self) -> Result<String> {
        std::fs::read_to_string(self.dir.path().join(LOG_FILE)).context("reading inboxd's log")
    }

    /// The daemon's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id, for signals.
    pub fn pid(&self) -> i32 {
        self.child.id().and_then(|id| i32::try_from(id).ok()).unwrap_or(0)
    }

    /// Sends `signal` and waits for the exit status.
    ///
    /// # Errors
    /// When the signal cannot be sent or the wait fails.
    pub async fn signal_and_wait(&mut self, signal: libc::c_int) -> Result<std::process::ExitStatus> {
        // SAFETY: kill(2) has no memory-safety preconditions.
        if unsafe { libc::kill(self.pid(), signal) } != 0 {
            return Err(std::io::Error::last_os_error()).context("signalling inboxd");
        }
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("inboxd did not exit after the signal")?
            .context("waiting for inboxd")
    }
}

/// The `inboxd` binary built by cargo next to this test binary (`INBOXD_BIN` overrides).
///
/// # Errors
/// When it has not been built.
pub fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("INBOXD_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating the test binary")?;
    // target/debug/deps/e2e-<hash> → target/debug/inboxd
    let path = exe.parent().and_then(|deps| deps.parent()).map(|dir| dir.join("inboxd"));
    match path {
        Some(path) if path.exists() => Ok(path),
        _ => bail!("the inboxd binary is not built; run `cargo build -p inboxd` (or set INBOXD_BIN)"),
    }
}

/// The queue whose consumer shows the daemon consumes: the one queue, or the first shard.
pub fn consumed_queue(config: &Config) -> String {
    match &config.shards {
        Some(_) => inboxd::broker::shards::queue_name(&config.broker, 0),
        None => config.broker.queue.clone(),
    }
}

/// Waits until `queue` has at least `consumers` consumers.
///
/// # Errors
/// When that does not happen within a bounded time.
pub async fn wait_consuming(node: &PrivateNode, queue: &str, consumers: u32) -> Result<()> {
    let connection = Connection::connect(&node.amqp_url(), ConnectionProperties::default()).await?;
    let waited = eventually(CONSUMING_TIMEOUT, format!("{consumers} consumers on queue {queue}"), || async {
        // A passive declare fails (and closes the channel) while the queue does not exist yet.
        let channel = connection.create_channel().await?;
        let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let declared = channel.queue_declare(queue.into(), options, FieldTable::default()).await?;
        ensure!(declared.consumer_count() >= consumers, "{} consumers", declared.consumer_count());
        Ok(())
    })
    .await;
    let _ = connection.close(200, "ok".into()).await;
    waited
}

/// Runs an `inboxd` subcommand (e.g. `held list`) with `env` added to a clean environment.
///
/// # Errors
/// When the binary is missing or does not finish within a bounded time.
pub async fn cli(args: &[&str], env: &HashMap<String, String>) -> Result<std::process::Output> {
    let binary = binary()?;
    let run = Command::new(&binary).args(args).env_clear().envs(env).stdin(Stdio::null()).kill_on_drop(true).output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .with_context(|| format!("inboxd {} did not finish", args.join(" ")))?
        .with_context(|| format!("running {}", binary.display()))
}

/// A free loopback address for a daemon's HTTP listener (bound, then released).
///
/// # Errors
/// When no port can be bound.
pub fn free_address() -> Result<std::net::SocketAddr> {
    Ok(std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, crate::ports::free_port()?)))
}

/// Polls `GET path` on a daemon's HTTP listener until it answers `status`; returns the body.
///
/// # Errors
/// When it does not within a bounded time.
pub async fn wait_status(address: std::net::SocketAddr, path: &str, status: u16) -> Result<String> {
    eventually(HTTP_WAIT, format!("{path} on {address} answering {status}"), || async {
        let (got, body) = http_get(address, path).await?;
        ensure!(got == status, "answered {got}: {body}");
        Ok(body)
    })
    .await
}

/// `GET path` on a daemon's HTTP listener: the status code and the body.
///
/// # Errors
/// When the connection or the read fails, or the answer is not HTTP.
pub async fn http_get(address: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    http_get_with(address, path, &[]).await
}

/// Like [`http_get`], with extra request `headers` (name, value).
///
/// # Errors
/// When the connection or the read fails, or the answer is not HTTP.
pub async fn http_get_with(
    address: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String)> {
    let answer = http_request(address, "GET", path, headers).await?;
    Ok((answer.status, answer.body))
}

/// An HTTP answer as [`http_request`] read it.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// `method path` (HTTP/1.0, no body) with extra request `headers`: status, headers and body.
///
/// # Errors
/// When the connection or the read fails, or the answer is not HTTP.
pub async fn http_request(
    address: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpAnswer> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream =
        tokio::net::TcpStream::connect(address).await.with_context(|| format!("connecting to {address}"))?;
    let extra: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    stream.write_all(format!("{method} {path} HTTP/1.0\r\nHost: {address}\r\n{extra}\r\n").as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut response)).await??;
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP header")?;
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok());
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok(HttpAnswer { status: status.context("no HTTP status")?, headers, body: body.to_owned() })
}
