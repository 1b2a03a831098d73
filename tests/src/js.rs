//! chat21's own JavaScript clients, unchanged from the npm registry (`tests/js`, installed by
//! `scripts/npm-ci.sh tests/js`), driven from a test: chat21client.js over MQTT and HTTP, and the
//! node SDK.
//!
//! Each [`JsClient`] is one `node tests/js/driver.js` process (the line protocol is described
//! there); it dies with the test. What the client's handlers see arrives as [`JsEvent`]s.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::{Instant, timeout_at};

/// Bound on one command (a connect, an HTTP call through the client) and on waiting for an event.
pub const JS_TIMEOUT: Duration = Duration::from_secs(20);

/// What a chat21client.js handler was called with: `name` is the handler (`onMessageAdded`,
/// `onConversationAdded`, `onGroupUpdated`, ...), `args` its arguments.
#[derive(Debug, Clone)]
pub struct JsEvent {
    pub name: String,
    pub args: Vec<Value>,
}

/// One driver process: a chat21client.js client (after [`JsClient::connect`]) and/or a node SDK
/// client (after [`JsClient::sdk`]).
pub struct JsClient {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    next_id: u64,
    events: VecDeque<JsEvent>,
}

/// `tests/js`, where `scripts/npm-ci.sh tests/js` ran `npm ci`.
fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js")
}

impl JsClient {
    /// Starts a driver process.
    ///
    /// # Errors
    /// When node or the installed clients are missing (run `scripts/npm-ci.sh tests/js`).
    pub fn start() -> Result<JsClient> {
        let dir = js_dir();
        if !dir.join("node_modules/@chat21").is_dir() {
            bail!("{} has no node_modules: run scripts/npm-ci.sh tests/js", dir.display());
        }
        let mut child = Command::new("node")
            .arg("driver.js")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting node tests/js/driver.js")?;
        let stdin = child.stdin.take().context("driver stdin")?;
        let stdout = child.stdout.take().context("driver stdout")?;
        Ok(JsClient { child, stdin, lines: BufReader::new(stdout).lines(), next_id: 0, events: VecDeque::new() })
    }

    /// Connects a chat21client.js `Chat21Client` as `user` (bare JWT as MQTT password, as the
    /// widget does), and returns once the broker acknowledged its inbox subscription.
    /// `mqtt_url` is e.g. `ws://127.0.0.1:<port>/ws`, `api_url` the history API's base
    /// (`http://127.0.0.1:<port>/api`).
    ///
    /// # Errors
    /// When the client does not connect within [`JS_TIMEOUT`].
    pub async fn connect(&mut self, mqtt_url: &str, api_url: &str, app: &str, user: &str, jwt: &str) -> Result<()> {
        let options = json!({"MQTTendpoint": mqtt_url, "APIendpoint": api_url, "appId": app});
        self.command(json!({"op": "client.connect", "options": options, "userId": user, "jwt": jwt}))
            .await
            .with_context(|| format!("chat21client.js connecting as {user}"))?;
        Ok(())
    }

    /// Calls a `Chat21Client` method with `args` and a final callback; returns the callback's
    /// arguments.
    ///
    /// # Errors
    /// When the method throws, or its callback is not called within [`JS_TIMEOUT`].
    pub async fn call(&mut self, method: &str, args: Value) -> Result<Vec<Value>> {
        let result = self
            .command(json!({"op": "client.call", "method": method, "args": args}))
            .await
            .with_context(|| format!("chat21client.js {method}"))?;
        serde_json::from_value(result).context("callback arguments")
    }

    /// Creates a `@chat21/chat21-node-sdk` client from its `config` (`url`, `appid`, `oauth`,
    /// `token`, `admintoken`, as Tiledesk passes them).
    ///
    /// # Errors
    /// When the SDK throws.
    pub async fn sdk(&mut self, config: Value) -> Result<()> {
        self.command(json!({"op": "sdk.init", "config": config})).await.context("node SDK init")?;
        Ok(())
    }

    /// Calls an SDK function by path (`groups.create`, `messages.send`...) and returns what its
    /// promise resolved to (the HTTP answer's body).
    ///
    /// # Errors
    /// When it rejects or does not settle within [`JS_TIMEOUT`].
    pub async fn sdk_call(&mut self, path: &str, args: Value) -> Result<Value> {
        self.command(json!({"op": "sdk.call", "path": path, "args": args}))
            .await
            .with_context(|| format!("node SDK {path}"))
    }

    /// The next event for which `wanted` holds, events before it dropped; waits at most
    /// [`JS_TIMEOUT`].
    ///
    /// # Errors
    /// On timeout (naming the events seen meanwhile) or when the driver ends.
    pub async fn event(&mut self, what: &str, wanted: impl Fn(&JsEvent) -> bool) -> Result<JsEvent> {
        let deadline = Instant::now() + JS_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            while let Some(event) = self.events.pop_front() {
                if wanted(&event) {
                    return Ok(event);
                }
                seen.push(event.name);
            }
            let Ok(line) = timeout_at(deadline, self.read_line()).await else {
                bail!("no {what} within {JS_TIMEOUT:?} (events seen meanwhile: {seen:?})");
            };
            if let Some(event) = Self::as_event(&line?)? {
                self.events.push_back(event);
            }
        }
    }

    /// Events received so far and not yet taken by [`JsClient::event`], handler `name` only.
    pub fn pending(&self, name: &str) -> Vec<JsEvent> {
        self.events.iter().filter(|event| event.name == name).cloned().collect()
    }

    async fn command(&mut self, mut command: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        command["id"] = json!(id);
        let mut line = command.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.context("writing to the driver")?;
        let deadline = Instant::now() + JS_TIMEOUT;
        loop {
            let Ok(line) = timeout_at(deadline, self.read_line()).await else {
                bail!("no answer within {JS_TIMEOUT:?}");
            };
            let line = line?;
            if let Some(event) = Self::as_event(&line)? {
                self.events.push_back(event);
                continue;
            }
            if line["id"] != json!(id) {
                bail!("answer to another command: {line}");
            }
            if line["ok"] == json!(true) {
                return Ok(line["result"].clone());
            }
            bail!("{}", line["error"].as_str().unwrap_or("failed"));
        }
    }

    async fn read_line(&mut self) -> Result<Value> {
        match self.lines.next_line().await.context("reading the driver")? {
            Some(line) => serde_json::from_str(&line).with_context(|| format!("driver output {line:?}")),
            None => {
                let status = self.child.try_wait().ok().flatten();
                bail!("the driver ended (status {status:?})")
            }
        }
    }

    fn as_event(line: &Value) -> Result<Option<JsEvent>> {
        let Some(name) = line["event"].as_str() else { return Ok(None) };
        let args = serde_json::from_value(line["args"].clone()).context("event arguments")?;
        Ok(Some(JsEvent { name: name.to_owned(), args }))
    }
}
