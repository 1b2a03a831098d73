//! Shared setup for the daemon tests: a fresh app id on the shared node with inboxd running
//! in-process, and connected chat21 users whose inboxes are subscribed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use inboxd_e2e::built::{built_plugin, built_plugins_dir};
use inboxd_e2e::daemon::{InProcess, Process, env_for, free_address, http_get, wait_status};
use inboxd_e2e::db::TestDb;
use inboxd_e2e::js::JsClient;
use inboxd_e2e::jwt::TokenOptions;
use inboxd_e2e::{ConnectOptions, MqttUser, PrivateNode, shared_node, unique_id};
use serde_json::Value;
use tokio::sync::{Mutex, MutexGuard};

/// Bound for every wait on a delivery.
pub const WAIT: Duration = Duration::from_secs(20);

/// One test's chat: its own app id (so its own queues), inboxd serving it.
pub struct Chat {
    pub node: &'static PrivateNode,
    pub app: String,
    pub daemon: InProcess,
    /// Its HTTP listener, if it has one (see [`ChatBuilder::listen`] and [`ChatBuilder::api`]).
    pub address: Option<std::net::SocketAddr>,
    /// Held by a chat on the app `tilechat` (see [`ChatBuilder::tilechat`]).
    _tilechat: Option<MutexGuard<'static, ()>>,
}

/// One chat at a time on the app `tilechat`: chat21client.js hard-codes it in the topics it
/// subscribes and archives on, and two daemons consuming one app's queue would share its messages.
static TILECHAT: Mutex<()> = Mutex::const_new(());

/// How a [`Chat`]'s inboxd is configured: settings on top of [`env_for`], and a config file
/// with a plugin chain.
#[derive(Default)]
#[must_use = "a chat starts with `start`"]
pub struct ChatBuilder<'a> {
    settings: Vec<(String, Option<String>)>,
    plugins: Option<&'a PluginSetup>,
    tilechat: bool,
    api: Option<std::net::SocketAddr>,
    listen: bool,
}

impl Chat {
    /// A new app on the shared node with inboxd consuming for it: `Chat::builder().start()`.
    pub async fn start() -> Result<Chat> {
        Chat::builder().start().await
    }

    /// [`assert_ready`] on this chat's daemon, which needs a listener ([`ChatBuilder::listen`]).
    pub async fn assert_ready(&self) -> Result<()> {
        let address = self.address.context("this chat has no HTTP listener: build it with `listen()`")?;
        assert_ready(address).await
    }

    /// A chat configured step by step, e.g.
    /// `Chat::builder().store(&db).plugins(&setup).env("INBOXD_PIPELINE_WORKERS", "1").start()`.
    pub fn builder<'a>() -> ChatBuilder<'a> {
        ChatBuilder::default()
    }

    /// `user` connected with a clean session and its inbox subscribed.
    pub async fn user(&self, user: &str) -> Result<MqttUser> {
        let mqtt = MqttUser::connect(self.node, user, &self.app, ConnectOptions::default())
            .await
            .with_context(|| format!("setup failed: connecting {user}"))?;
        mqtt.subscribe_inbox().await.with_context(|| format!("setup failed: subscribing {user}'s inbox"))?;
        Ok(mqtt)
    }

    /// `apps/<app>/<rest>`, an MQTT topic of this chat.
    pub fn topic(&self, rest: &str) -> String {
        format!("apps/{}/{rest}", self.app)
    }
}

impl<'a> ChatBuilder<'a> {
    /// Sets environment variable `key` (an `INBOXD_*` setting or a chat21 alias) to `value`.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.settings.push((key.to_owned(), Some(value.into())));
        self
    }

    /// Removes `key` from the environment (e.g. `INBOXD_STORE_URL`, so that the config file's
    /// store counts).
    pub fn unset(mut self, key: &str) -> Self {
        self.settings.push((key.to_owned(), None));
        self
    }

    /// Persists into `db` (`INBOXD_STORE_URL`).
    pub fn store(self, db: &TestDb) -> Self {
        self.env("INBOXD_STORE_URL", db.url())
    }

    /// Reads (and watches) the config file of `plugins`, with its plugin chain.
    pub fn plugins(mut self, plugins: &'a PluginSetup) -> Self {
        self.plugins = Some(plugins);
        self
    }

    /// Serves the app `tilechat` instead of a new app, as chat21client.js needs (it subscribes to
    /// `apps/tilechat/users/<user>/#` whatever its app id): the chat waits for any other on that app
    /// to end. Its tests use user ids of their own ([`unique_id`]).
    pub fn tilechat(mut self) -> Self {
        self.tilechat = true;
        self
    }

    /// Serves the history API on `address`, checking tokens with the shared node's JWT key.
    pub fn api(mut self, address: std::net::SocketAddr) -> Self {
        self.api = Some(address);
        self
    }

    /// An HTTP listener (`/readyz`, `/metrics`) on a free loopback address, for
    /// [`Chat::assert_ready`].
    pub fn listen(mut self) -> Self {
        self.listen = true;
        self
    }

    /// A new app on the shared node with inboxd, so configured, consuming for it.
    ///
    /// # Errors
    /// "setup failed" when the shared node does not start, or inboxd does not start consuming.
    pub async fn start(self) -> Result<Chat> {
        let node = shared_node().await.context("setup failed: shared node")?;
        let tilechat = if self.tilechat { Some(TILECHAT.lock().await) } else { None };
        let app = if tilechat.is_some() { "tilechat".to_owned() } else { unique_id("app") };
        let mut env = env_for(node, &app);
        let address = match self.api {
            Some(address) => Some(address),
            None if self.listen => Some(free_address()?),
            None => None,
        };
        if let Some(address) = address {
            env.insert("INBOXD_HTTP_ADDRESS".into(), address.to_string());
        }
        if self.api.is_some() {
            env.insert("INBOXD_AUTH_SECRET".into(), node.jwt_secret().to_owned());
        }
        for (key, value) in self.settings {
            match value {
                Some(value) => env.insert(key, value),
                None => env.remove(&key),
            };
        }
        let file = self.plugins.map(|plugins| plugins.config.as_path());
        let daemon = InProcess::start_with_file(node, env, file).await.context("setup failed: inboxd")?;
        Ok(Chat { node, app, daemon, address, _tilechat: tilechat })
    }
}

/// A plugin folder of one test (copies of the built example plugins) and its config file.
pub struct PluginSetup {
    dir: tempfile::TempDir,
    pub config: PathBuf,
}

/// An `inboxd` process started by [`PluginSetup::spawn`].
pub struct Spawned {
    pub node: &'static PrivateNode,
    pub app: String,
    /// Its HTTP listener.
    pub address: std::net::SocketAddr,
    pub daemon: Process,
}

impl PluginSetup {
    /// Copies `plugins` (names in target/plugins, without `.wasm`) and writes a config with `chain`
    /// (`[[plugins.chain]]` entries).
    pub fn new(plugins: &[&str], chain: &str) -> Result<PluginSetup> {
        let dir = tempfile::Builder::new().prefix("inboxd-plugins-").tempdir()?;
        for name in plugins {
            let from = built_plugin(name);
            std::fs::copy(&from, dir.path().join(format!("{name}.wasm")))
                .with_context(|| format!("setup failed: copying {}", from.display()))?;
        }
        let setup = PluginSetup { config: dir.path().join("inboxd.toml"), dir };
        setup.write_config(chain)?;
        Ok(setup)
    }

    /// The real `inboxd` binary (for its `/metrics`: an in-process daemon installs no metrics
    /// recorder) on a new app of the shared node, with this config and an HTTP listener, ready.
    ///
    /// # Errors
    /// "setup failed" when the node or the daemon does not start, or its listener is not ready.
    pub async fn spawn(&self) -> Result<Spawned> {
        let node = shared_node().await.context("setup failed: shared node")?;
        let app = unique_id("app");
        let address = free_address()?;
        let mut env = env_for(node, &app);
        env.insert("INBOXD_CONFIG".into(), self.config.display().to_string());
        env.insert("INBOXD_HTTP_ADDRESS".into(), address.to_string());
        let daemon = Process::spawn(node, &format!("inboxd.{app}"), &env).await.context("setup failed: inboxd")?;
        wait_status(address, "/readyz", 200).await.context("setup failed: inboxd's HTTP listener")?;
        Ok(Spawned { node, app, address, daemon })
    }

    /// Rewrites the config file with another chain (the daemon watches it).
    pub fn write_config(&self, chain: &str) -> Result<()> {
        let cache = built_plugins_dir().join("../e2e-plugin-cache");
        let text = format!(
            "[plugins]\ndir = {dir:?}\ncache_dir = {cache:?}\nwatch = true\n\n{chain}\n",
            dir = self.dir.path().display().to_string(),
            cache = cache.display().to_string(),
        );
        // Write then rename, so the watcher never sees half a file.
        let partial = self.dir.path().join("inboxd.toml.partial");
        std::fs::write(&partial, text)?;
        std::fs::rename(&partial, &self.config)?;
        Ok(())
    }

    /// Replaces plugin file `name` (with `.wasm`) by `bytes`.
    pub fn write_plugin(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let partial = self.dir.path().join(format!("{name}.partial"));
        std::fs::write(&partial, bytes)?;
        std::fs::rename(&partial, self.dir.path().join(name))?;
        Ok(())
    }

    /// The built example plugin `name` (without `.wasm`).
    pub fn built(name: &str) -> Result<Vec<u8>> {
        let file = built_plugin(name);
        std::fs::read(&file).with_context(|| format!("setup failed: reading {}", file.display()))
    }
}

/// The next message `user` receives from inboxd, as (topic, JSON).
///
/// A user's inbox subscription (`apps/<app>/users/<me>/#`) also matches what the user itself
/// publishes there (`…/update`, `…/archive`, `…/presence/…`); like chat21 clients, skip those.
pub async fn next(user: &mut MqttUser) -> Result<(String, Value)> {
    loop {
        let received =
            user.recv(WAIT).await.with_context(|| format!("{} received nothing within {WAIT:?}", user.user()))?;
        let own = received.topic.ends_with("/update")
            || received.topic.ends_with("/archive")
            || received.topic.contains("/presence/");
        if !own {
            return Ok((received.topic.clone(), received.json()?));
        }
    }
}

/// Asserts the next message of `user` arrives on `topic` and returns its JSON.
pub async fn expect_on(user: &mut MqttUser, topic: &str) -> Result<Value> {
    let (got, body) = next(user).await?;
    ensure!(got == topic, "{} got a message on {got}, expected {topic}: {body}", user.user());
    Ok(body)
}

/// Announces group `uid` with `members` the way the server side does (`groups.update`, every
/// member notified) and waits until each user of `notified` got the change: from then on inboxd
/// routes the group by its stored members (the chat needs a store, see `db::TestDb`).
pub async fn announce_group(chat: &Chat, uid: &str, members: &[&str], notified: &mut [&mut MqttUser]) -> Result<()> {
    let members: serde_json::Map<String, Value> = members.iter().map(|m| ((*m).to_owned(), Value::from(1))).collect();
    let group = serde_json::json!({"uid": uid, "name": uid, "members": members});
    let observer = inboxd_e2e::amqp::Observer::connect(chat.node).await?;
    let key = format!("apps.observer.{}.groups.update", chat.app);
    observer.publish_json(&key, &serde_json::json!({"group": group, "notify_to": members})).await?;
    for user in notified {
        let name = user.user().to_owned();
        expect_on(user, &chat.topic(&format!("users/{name}/groups/{uid}/clientupdated"))).await?;
    }
    Ok(())
}

/// A chat on the app `tilechat` (see [`ChatBuilder::tilechat`]) persisting into `db`, with the
/// history API on a free address (returned) and the shared node's JWT key: what chat21client.js needs.
pub async fn tilechat_with_api(db: &TestDb) -> Result<(Chat, std::net::SocketAddr)> {
    let address = inboxd_e2e::daemon::free_address()?;
    let chat = Chat::builder().tilechat().store(db).api(address).start().await?;
    Ok((chat, address))
}

/// chat21client.js connected as `user` to `chat` over web MQTT, reading the API at `address`,
/// with a token minted for `user` (the bare JWT, as the widget sends it).
pub async fn js_client(chat: &Chat, address: std::net::SocketAddr, user: &str) -> Result<JsClient> {
    let jwt = chat.node.issuer().mint(user, &chat.app, &TokenOptions::default())?;
    let mut client = JsClient::start()?;
    let mqtt_url = format!("ws://127.0.0.1:{}/ws", chat.node.ws_port());
    client.connect(&mqtt_url, &format!("http://{address}/api"), &chat.app, user, &jwt).await?;
    Ok(client)
}

/// `method path` with a JSON `body` and the bare token in `Authorization`: status and JSON answer.
pub async fn call_json(
    address: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &Value,
) -> Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let body = body.to_string();
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\nAuthorization: {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(format!("{head}{body}").as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut answer)).await??;
    let (head, body) = answer.split_once("\r\n\r\n").context("no HTTP header")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no HTTP status")?;
    Ok((status, serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()))))
}

/// Asserts that the daemon listening on `address` is ready now: `/readyz` answers 200 (no
/// retry). Hostile tests call it after the hostile input: the daemon stayed up and consuming.
pub async fn assert_ready(address: std::net::SocketAddr) -> Result<()> {
    let (status, body) = http_get(address, "/readyz").await?;
    ensure!(status == 200, "inboxd is not ready after the hostile input: /readyz answered {status}: {body}");
    Ok(())
}
