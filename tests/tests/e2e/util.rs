//! Shared setup for the daemon tests: a fresh app id on the shared node with inboxd running
//! in-process, and connected chat21 users whose inboxes are subscribed.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use inboxd_e2e::daemon::{InProcess, env_for};
use inboxd_e2e::{ConnectOptions, MqttUser, PrivateNode, shared_node, unique_id};
use serde_json::Value;

/// Bound for every wait on a delivery.
pub const WAIT: Duration = Duration::from_secs(20);

/// One test's chat: its own app id (so its own queues), inboxd serving it.
pub struct Chat {
    pub node: &'static PrivateNode,
    pub app: String,
    pub daemon: InProcess,
}

impl Chat {
    /// A new app on the shared node with inboxd consuming for it.
    pub async fn start() -> Result<Chat> {
        Chat::start_with(|_| {}).await
    }

    /// Like [`Chat::start`], with extra `INBOXD_*` settings.
    pub async fn start_with(configure: impl FnOnce(&mut HashMap<String, String>)) -> Result<Chat> {
        let node = shared_node().await.context("setup failed: shared node")?;
        let app = unique_id("app");
        let mut env = env_for(node, &app);
        configure(&mut env);
        let daemon = InProcess::start(node, env).await.context("setup failed: inboxd")?;
        Ok(Chat { node, app, daemon })
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
