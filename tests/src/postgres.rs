//! A private PostgreSQL server for the store tests: `initdb` into a directory of its own, its own
//! port on 127.0.0.1 and unix socket directory, trust authentication, and tied to the test
//! process by a lifeline (see [`crate::lifeline`]), so it never outlives it, even after a panic
//! or a SIGKILL. [`shared_postgres`] starts one per test binary; [`POSTGRES_URL_ENV`] points the
//! tests at an existing server instead.
//!
//! Debian's `postgresql` package provides the binaries (`scripts/setup.sh` installs it); the
//! machine's own cluster, if any, is never used or touched. PostgreSQL refuses to run as root:
//! under root the server and `initdb` run as `nobody`.

use std::{
    ffi::CString,
    fs::{self, OpenOptions},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    str::FromStr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use sqlx::{ConnectOptions, Connection, postgres::PgConnectOptions};
use tokio::sync::OnceCell;

use crate::{lifeline, unique_id};

/// Set to an admin URL (a superuser that may create and drop databases, e.g.
/// `postgres://postgres@127.0.0.1:5432/postgres`) to use that server instead of a private one.
pub const POSTGRES_URL_ENV: &str = "INBOXD_TEST_POSTGRES";

/// Where Debian's `postgresql-15` puts its server binaries.
const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The OS user that runs `initdb` and the server when the tests run as root.
const UNPRIVILEGED_USER: &str = "nobody";
/// The database superuser `initdb` creates (trust authentication, no password).
const SUPERUSER: &str = "postgres";
/// Budget for one start, launch to the first accepted connection.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Starts with fresh ports when the server exits during start (a port taken in between).
const START_ATTEMPTS: usize = 3;
/// Time the watchdog gives the server after SIGINT (a fast shutdown) before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long stopping waits for the watchdog before killing it.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between readiness probes and exit checks.
const POLL: Duration = Duration::from_millis(100);
/// Budget for one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of the server log shown when a start fails.
const LOG_TAIL_LINES: usize = 30;

/// Server settings: tests run many daemons (each with a pool) at once, and a test database is
/// thrown away, so durability is traded for speed.
const SETTINGS: [&str; 6] = [
    "listen_addresses=127.0.0.1",
    "max_connections=300",
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "log_min_messages=warning",
];

/// A private PostgreSQL server. Dropping it stops the server (blocking, bounded).
#[derive(Debug)]
pub struct PrivatePostgres {
    /// Holds `data/` (the cluster), the unix socket and `postgres.log`.
    dir: PathBuf,
    port: u16,
    watchdog: Option<Child>,
    /// Closing it stops the server; the kernel closes it when the test process dies.
    cord: Option<ChildStdin>,
}

impl PrivatePostgres {
    /// Creates a cluster under `dir` (created if missing) and starts a server on it; waits until
    /// it accepts connections. With `remove_dir_at_exit`, the watchdog removes `dir` once the
    /// server is gone.
    ///
    /// # Errors
    ///
    /// When `initdb` fails (is the `postgresql` package installed? `scripts/setup.sh`), or the
    /// server does not start; the server log's tail is in the error.
    pub async fn start(dir: impl AsRef<Path>, remove_dir_at_exit: bool) -> Result<PrivatePostgres> {
        let owner = ServerUser::for_this_process()?;
        let mut attempt = 1;
        loop {
            // A failed start with `remove_dir_at_exit` removes the directory: each start makes it.
            let dir = create_cluster(dir.as_ref(), owner).await?;
            let mut server = PrivatePostgres { dir, port: crate::ports::free_port()?, watchdog: None, cord: None };
            match server.boot(owner, remove_dir_at_exit).await {
                Ok(()) => return Ok(server),
                Err(BootFailure::Exited(error)) if attempt < START_ATTEMPTS => {
                    eprintln!("inboxd-e2e: {error:#}; starting PostgreSQL again on another port");
                    attempt += 1;
                }
                Err(BootFailure::Exited(error) | BootFailure::Other(error)) => return Err(error),
            }
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`: a superuser connection.
    pub fn admin_url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's directory (cluster, socket, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    async fn boot(&mut self, owner: ServerUser, remove_dir_at_exit: bool) -> Result<(), BootFailure> {
        let log_file = self.log_file();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)
            .with_context(|| format!("opening {}", log_file.display()))
            .map_err(BootFailure::Other)?;
        let cleanup = remove_dir_at_exit.then_some(self.dir.as_path());
        // SIGINT: a fast shutdown, which does not wait for clients (a SIGKILLed test process may
        // leave inboxd processes holding connections).
        let mut command = lifeline::watchdog("INT", STOP_GRACE, cleanup);
        owner.prefix(&mut command);
        command.arg(Path::new(BIN_DIR).join("postgres")).arg("-D").arg(self.dir.join("data"));
        command.arg("-p").arg(self.port.to_string()).arg("-k").arg(&self.dir);
        for setting in SETTINGS {
            command.arg("-c").arg(setting);
        }
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                command.env_remove(key);
            }
        }
        command
            .stdin(Stdio::piped())
            .stdout(log.try_clone().context("duplicating the log handle").map_err(BootFailure::Other)?)
            .stderr(log);
        let mut watchdog = command.spawn().context("launching PostgreSQL under /bin/sh").map_err(BootFailure::Other)?;
        self.cord = watchdog.stdin.take();
        self.watchdog = Some(watchdog);
        let Err(error) = self.wait_ready().await else { return Ok(()) };
        let exited = self.exited();
        let error = error.context(format!("PostgreSQL in {} did not start\n{}", self.dir.display(), self.log_tail()));
        self.stop_blocking();
        Err(if exited { BootFailure::Exited(error) } else { BootFailure::Other(error) })
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let options = PgConnectOptions::from_str(&self.admin_url())?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.exited() {
                bail!("the server exited during start");
            }
            let error = match tokio::time::timeout(PROBE_TIMEOUT, options.connect()).await {
                Ok(Ok(connection)) => return connection.close().await.context("closing the probe connection"),
                Ok(Err(error)) => anyhow!(error),
                Err(_) => anyhow!("a connection attempt took over {PROBE_TIMEOUT:?}"),
            };
            if Instant::now() >= deadline {
                return Err(error.context(format!("not ready within {START_TIMEOUT:?}")));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether the watchdog (hence the server) has exited.
    fn exited(&mut self) -> bool {
        self.watchdog.as_mut().is_none_or(|watchdog| !matches!(watchdog.try_wait(), Ok(None)))
    }

    /// Cuts the lifeline and waits (blocking, bounded) until the server is gone.
    fn stop_blocking(&mut self) {
        drop(self.cord.take());
        let Some(mut watchdog) = self.watchdog.take() else { return };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(watchdog.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                eprintln!("inboxd-e2e: PostgreSQL in {} did not stop; killing its watchdog", self.dir.display());
                let _ = watchdog.kill();
                let _ = watchdog.wait();
                return;
            }
            thread::sleep(POLL);
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        format!("--- tail of {}\n{tail}", self.log_file().display())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop_blocking();
    }
}

/// The admin URL of this test binary's PostgreSQL: [`POSTGRES_URL_ENV`] if set, else a private
/// server started on first use (in a fresh directory under the system's temporary directory,
/// removed when the test binary exits) and shared by all its tests.
///
/// # Errors
///
/// When the private server did not start; every later call returns the same error.
pub async fn shared_postgres() -> Result<String> {
    static SHARED: OnceCell<Result<PrivatePostgres, String>> = OnceCell::const_new();
    if let Ok(url) = std::env::var(POSTGRES_URL_ENV) {
        return Ok(url);
    }
    SHARED
        .get_or_init(|| async {
            let dir = std::env::temp_dir().join(unique_id("inboxd-e2e-postgres"));
            PrivatePostgres::start(&dir, true).await.map_err(|error| format!("{error:#}"))
        })
        .await
        .as_ref()
        .map(PrivatePostgres::admin_url)
        .map_err(|error| anyhow!("the private PostgreSQL server did not start: {error}"))
}

/// Who runs `initdb` and the server: this process, or [`UNPRIVILEGED_USER`] under root.
#[derive(Clone, Copy, Debug)]
enum ServerUser {
    Me,
    Other { uid: libc::uid_t, gid: libc::gid_t },
}

impl ServerUser {
    fn for_this_process() -> Result<ServerUser> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(ServerUser::Me);
        }
        let name = CString::new(UNPRIVILEGED_USER).expect("no NUL in the user name");
        // SAFETY: getpwnam gets a valid C string; the returned entry is read at once, before any
        // other call that could overwrite it.
        let entry = unsafe { libc::getpwnam(name.as_ptr()) };
        if entry.is_null() {
            bail!("running as root, and there is no user `{UNPRIVILEGED_USER}` to run PostgreSQL as");
        }
        // SAFETY: a non-null entry from getpwnam points to a valid passwd struct.
        let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
        Ok(ServerUser::Other { uid, gid })
    }

    /// Gives `dir` to the server's user.
    fn own(self, dir: &Path) -> Result<()> {
        if let ServerUser::Other { uid, gid } = self {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .with_context(|| format!("giving {} to {UNPRIVILEGED_USER}", dir.display()))?;
        }
        Ok(())
    }

    /// Makes `command` (the watchdog) run the server through `setpriv` as this user; the
    /// watchdog itself stays root, so that it can remove the directory at the end.
    fn prefix(self, command: &mut Command) {
        if let ServerUser::Other { uid, gid } = self {
            command.arg("setpriv").arg(format!("--reuid={uid}")).arg(format!("--regid={gid}"));
            command.args(["--clear-groups", "--"]);
        }
    }
}

/// Why a start failed: only a server that exited is worth another attempt on another port.
enum BootFailure {
    Exited(anyhow::Error),
    Other(anyhow::Error),
}

/// Creates `dir` for the server's user, with a fresh cluster in `dir/data`; returns `dir`
/// resolved.
async fn create_cluster(dir: &Path, owner: ServerUser) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    owner.own(&dir)?;
    let init_dir = dir.clone();
    tokio::task::spawn_blocking(move || initdb(&init_dir, owner)).await.context("the initdb task panicked")??;
    Ok(dir)
}

/// `initdb` into `dir/data`: UTF-8, C locale, superuser `postgres`, trust authentication.
fn initdb(dir: &Path, owner: ServerUser) -> Result<()> {
    let initdb = Path::new(BIN_DIR).join("initdb");
    if !initdb.exists() {
        bail!("{} is missing: install Debian's `postgresql` package (scripts/setup.sh)", initdb.display());
    }
    let mut command = Command::new(&initdb);
    command
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
        .stdin(Stdio::null());
    if let ServerUser::Other { uid, gid } = owner {
        // Under root, std also drops the supplementary groups (setgroups) when it sets the uid.
        command.uid(uid).gid(gid);
    }
    let output = command.output().with_context(|| format!("running {}", initdb.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            initdb.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
