//! A real headless browser for the console tests: Debian's `chromium`, driven over WebDriver
//! ([`fantoccini`]) through one private `chromedriver` per test binary, on a port of its own
//! and tied to the test process by a lifeline (see [`crate::lifeline`]), so it never outlives it.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Map, Value, json};
use tokio::sync::OnceCell;

use crate::{eventually, lifeline};

/// Debian's chromedriver and the browser it drives (`scripts/setup.sh` installs both).
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// How long chromedriver gets to answer `/status` after its start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Grace between the stop signal and SIGKILL of chromedriver and its browsers.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The test binary's chromedriver, started on first use.
static DRIVER: OnceCell<Driver> = OnceCell::const_new();

struct Driver {
    port: u16,
    /// The watchdog; never waited for: it goes with the test process.
    _watchdog: Child,
    /// The lifeline: closed by the kernel when the test process exits.
    _cord: ChildStdin,
}

/// The shared chromedriver's WebDriver URL, starting it on first use.
///
/// # Errors
/// "setup failed" when chromedriver or chromium is missing or does not start.
async fn driver() -> Result<String> {
    let driver = DRIVER.get_or_try_init(start).await?;
    Ok(format!("http://127.0.0.1:{}", driver.port))
}

async fn start() -> Result<Driver> {
    for needed in [CHROMEDRIVER, CHROMIUM] {
        ensure!(Path::new(needed).exists(), "setup failed: {needed} is missing (scripts/setup.sh installs it)");
    }
    let port = crate::ports::free_port()?;
    let log = tempfile::Builder::new().prefix("inboxd-chromedriver-").suffix(".log").tempfile()?.keep()?.1;
    let file = std::fs::File::create(&log)?;
    let mut command = lifeline::watchdog("TERM", STOP_GRACE, None);
    command
        .arg(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(file.try_clone()?)
        .stderr(file);
    let mut watchdog = command.spawn().context("setup failed: launching chromedriver")?;
    let cord = watchdog.stdin.take().context("the watchdog's stdin")?;
    let status = format!("http://127.0.0.1:{port}/status");
    eventually(START_TIMEOUT, format!("chromedriver answering on {status} (log: {})", log.display()), || async {
        let answer = status_of(port).await?;
        ensure!(answer.contains("\"ready\":true"), "answered {answer}");
        Ok(())
    })
    .await
    .context("setup failed: chromedriver")?;
    Ok(Driver { port, _watchdog: watchdog, _cord: cord })
}

/// chromedriver's `/status` answer (it refuses HTTP/1.0, which the harness's client speaks).
async fn status_of(port: u16) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    // It may keep the connection open: read until the answer's JSON is complete or it closes.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await??;
        answer.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&answer);
        if read == 0 || text.trim_end().ends_with("}}") {
            return Ok(text.into_owned());
        }
    }
}

/// One browser window (its own profile, so its own cookies), closed by [`Browser::close`].
pub struct Browser {
    pub client: Client,
}

impl Browser {
    /// A new headless chromium at `width`×`height`.
    ///
    /// # Errors
    /// "setup failed" when the driver or the browser does not start.
    pub async fn open(width: u32, height: u32) -> Result<Browser> {
        let url = driver().await?;
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            &format!("--window-size={width},{height}"),
        ];
        let mut capabilities = Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert("goog:chromeOptions".into(), json!({ "binary": CHROMIUM, "args": args }));
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .context("setup failed: opening a chromium session")?;
        Ok(Browser { client })
    }

    /// Resizes the window to `width`×`height`.
    ///
    /// # Errors
    /// When the driver refuses.
    pub async fn resize(&self, width: u32, height: u32) -> Result<()> {
        self.client.set_window_size(width, height).await.context("resizing the window")
    }

    /// Saves a PNG of the window to `dir/name.png`.
    ///
    /// # Errors
    /// When the screenshot or the write fails.
    pub async fn screenshot(&self, dir: &Path, name: &str) -> Result<PathBuf> {
        let png = self.client.screenshot().await.context("taking a screenshot")?;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// Runs `script` in the page as an async function body that ends by calling
    /// `arguments[arguments.length - 1](result)`; returns the result.
    ///
    /// # Errors
    /// When the script throws or the driver fails.
    pub async fn run_async(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.client.execute_async(script, args).await.context("running a script in the page")
    }

    /// Ends the browser session.
    ///
    /// # Errors
    /// When the driver does not answer.
    pub async fn close(self) -> Result<()> {
        match self.client.close().await {
            Ok(()) => Ok(()),
            Err(err) => bail!("closing the browser: {err}"),
        }
    }
}
