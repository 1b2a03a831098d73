//! A chat21 user's MQTT 3.1.1 connection for tests: JWT login, received messages in a channel,
//! and broker refusals (CONNACK codes, closed connections) as errors a test can assert on.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
pub use rumqttc::ConnectReturnCode;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS, Request,
    SubscribeReasonCode,
};
use serde_json::Value;
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::timeout,
};

use crate::{
    broker::PrivateNode,
    jwt::{ClientIds, TokenOptions},
};

/// Publishes `payload` to `topic` once as `user` at QoS 1 on a connection of its own; with `dup`,
/// the way an MQTT client retransmits a publish it got no PUBACK for after a reconnect (the DUP
/// flag set). Waits for the PUBACK.
///
/// # Errors
/// When minting the token fails, or the broker closes the connection or does not acknowledge.
pub async fn publish_once(
    node: &PrivateNode,
    user: &str,
    app: &str,
    topic: &str,
    payload: impl Into<Vec<u8>>,
    dup: bool,
) -> Result<()> {
    let token = node.issuer().mint(user, app, &TokenOptions::default())?;
    let mut options = MqttOptions::new(uuid::Uuid::new_v4().to_string(), "127.0.0.1", node.mqtt_port());
    options.set_credentials(user, token);
    // The client must live while the event loop runs: its end closes the request channel.
    let (_client, mut event_loop) = AsyncClient::new(options, 1);
    let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload);
    publish.dup = dup;
    publish.pkid = 1;
    let acked = async {
        // What an event loop resends first on a resumed session (it clears them on a new one).
        while !matches!(event_loop.poll().await.context("connecting")?, Event::Incoming(Packet::ConnAck(_))) {}
        event_loop.pending.push_back(Request::Publish(publish));
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = event_loop.poll().await.context("retransmitting")? {
                return anyhow::Ok(());
            }
        }
    };
    timeout(ACK_TIMEOUT, acked).await.with_context(|| format!("no PUBACK for the publish to {topic}"))?
}

/// How long connect, publish (PUBACK), subscribe (SUBACK) and disconnect wait for the broker.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Default keep-alive interval.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Requests (publishes, subscribes) that may wait for the event loop: room for a test that
/// publishes 1000 messages at once; rumqttc itself keeps at most 100 publishes in flight.
const REQUEST_CAPACITY: usize = 10_000;
/// Pause between reconnect attempts of a persistent session.
const RECONNECT_DELAY: Duration = Duration::from_millis(250);
/// Largest packet sent or received (rumqttc's default is 10 KiB).
const MAX_PACKET_BYTES: usize = 1 << 20;

/// How to connect.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Default: what the token's client-id mode allows (any: a random uuid, exact: the user id,
    /// prefix: `<user>.<uuid>`).
    pub client_id: Option<String>,
    /// `false`: a persistent session that survives disconnects and reconnects by itself after
    /// the connection was lost (a broker restart), re-sending nothing that was in flight.
    pub clean_session: bool,
    /// The password instead of a freshly minted token (to test refused tokens).
    pub token: Option<String>,
    /// How to mint the token when `token` is `None`.
    pub token_options: TokenOptions,
    /// MQTT keep-alive: the client pings when idle this long, the broker closes after 1.5 times it.
    pub keep_alive: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            client_id: None,
            clean_session: true,
            token: None,
            token_options: TokenOptions::default(),
            keep_alive: DEFAULT_KEEP_ALIVE,
        }
    }
}

/// A message the broker delivered.
#[derive(Clone, Debug)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Received {
    /// The payload as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.payload).with_context(|| format!("payload on {} is not JSON", self.topic))
    }
}

/// Why [`MqttUser::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The broker answered CONNACK with this code (4: bad token, 5: not authorised, 3: session
    /// queue refused).
    #[error("the broker refused the MQTT connection: CONNACK {0:?}")]
    Refused(ConnectReturnCode),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Callers waiting for the broker to acknowledge their packets, one book per packet type.
#[derive(Default)]
struct Acks {
    publishes: Waiters,
    subscribes: Waiters,
}

type Waiter = oneshot::Sender<Result<(), String>>;

#[derive(Default)]
struct Waiters {
    /// Handed to rumqttc in this order, no packet id yet; rumqttc assigns ids in the same order.
    queued: VecDeque<Waiter>,
    in_flight: HashMap<u16, Waiter>,
}

impl Waiters {
    fn sent(&mut self, pkid: u16) {
        if !self.in_flight.contains_key(&pkid)
            && let Some(waiter) = self.queued.pop_front()
        {
            self.in_flight.insert(pkid, waiter);
        }
    }

    fn acked(&mut self, pkid: u16, result: Result<(), String>) {
        if let Some(waiter) = self.in_flight.remove(&pkid) {
            // The caller may have timed out and gone.
            let _ = waiter.send(result);
        }
    }

    fn fail_all(&mut self, why: &str) {
        let in_flight = self.in_flight.drain().map(|(_, waiter)| waiter);
        for waiter in self.queued.drain(..).chain(in_flight) {
            let _ = waiter.send(Err(why.to_owned()));
        }
    }
}

/// One MQTT connection of a chat21 user. The event loop runs on a task of the runtime that
/// connected; dropping the `MqttUser` aborts it (an unclean close: a last will would fire).
pub struct MqttUser {
    user: String,
    app: String,
    client_id: String,
    client: AsyncClient,
    acks: Arc<Mutex<Acks>>,
    /// `true` while connected.
    link: watch::Receiver<bool>,
    /// Unbounded on purpose: a test reads at its own pace and must not stall the event loop.
    received: mpsc::UnboundedReceiver<Received>,
    event_loop: JoinHandle<()>,
}

fn lock(acks: &Mutex<Acks>) -> MutexGuard<'_, Acks> {
    // Nothing panics while holding the lock; a poisoned book is still consistent.
    acks.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MqttUser {
    /// Connects `user` of `app` to `node`: a JWT as the password, the user id as the user name.
    ///
    /// # Errors
    ///
    /// [`ConnectError::Refused`] with the CONNACK code when the broker refuses the login,
    /// [`ConnectError::Other`] when minting the token fails or the broker does not answer
    /// within [`ACK_TIMEOUT`].
    pub async fn connect(
        node: &PrivateNode,
        user: &str,
        app: &str,
        options: ConnectOptions,
    ) -> Result<MqttUser, ConnectError> {
        let token = match options.token {
            Some(token) => token,
            None => node.issuer().mint(user, app, &options.token_options)?,
        };
        let client_id = options.client_id.unwrap_or_else(|| {
            let random = uuid::Uuid::new_v4().to_string();
            match options.token_options.client_ids {
                ClientIds::Any => random,
                ClientIds::Exact => user.to_owned(),
                ClientIds::Prefix => format!("{user}.{random}"),
            }
        });
        let mut mqtt_options = MqttOptions::new(&client_id, "127.0.0.1", node.mqtt_port());
        mqtt_options
            .set_credentials(user, token)
            .set_clean_session(options.clean_session)
            .set_keep_alive(options.keep_alive)
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        let (client, event_loop) = AsyncClient::new(mqtt_options, REQUEST_CAPACITY);

        let acks = Arc::new(Mutex::new(Acks::default()));
        let (link_tx, link) = watch::channel(false);
        let (received_tx, received) = mpsc::unbounded_channel();
        let (connack_tx, connack) = oneshot::channel();
        let driver = Driver {
            event_loop,
            reconnect: !options.clean_session,
            acks: acks.clone(),
            link: link_tx,
            received: received_tx,
        };
        let event_loop = tokio::spawn(driver.run(connack_tx));
        let user = MqttUser {
            user: user.to_owned(),
            app: app.to_owned(),
            client_id,
            client,
            acks,
            link,
            received,
            event_loop,
        };
        match timeout(ACK_TIMEOUT, connack).await {
            Ok(Ok(Ok(()))) => Ok(user),
            Ok(Ok(Err(error))) => Err(error),
            Ok(Err(_)) => Err(anyhow!("the MQTT event loop ended before CONNACK").into()),
            Err(_) => Err(anyhow!("no CONNACK within {ACK_TIMEOUT:?}").into()),
        }
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn app(&self) -> &str {
        &self.app
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// `apps/<app>/users/<user>/#`, the only filter the user may subscribe to.
    pub fn inbox_filter(&self) -> String {
        format!("apps/{}/users/{}/#", self.app, self.user)
    }

    /// `apps/<app>/outgoing/users/<user>/messages/<recipient>/outgoing`: where the user sends a
    /// message to `recipient` (a user or a group).
    pub fn outgoing_topic(&self, recipient: &str) -> String {
        format!("apps/{}/outgoing/users/{}/messages/{recipient}/outgoing", self.app, self.user)
    }

    /// Subscribes to the user's inbox at QoS 1 and waits for the SUBACK.
    pub async fn subscribe_inbox(&self) -> Result<()> {
        self.subscribe(&self.inbox_filter()).await
    }

    /// Subscribes to `filter` at QoS 1 and waits for the SUBACK.
    ///
    /// # Errors
    ///
    /// When the SUBACK refuses it, or the connection closes first (RabbitMQ closes it on a
    /// forbidden filter instead of refusing in the SUBACK), or no SUBACK comes in time.
    pub async fn subscribe(&self, filter: &str) -> Result<()> {
        let (waiter, acked) = oneshot::channel();
        {
            let mut acks = lock(&self.acks);
            acks.subscribes.queued.push_back(waiter);
            if let Err(error) = self.client.try_subscribe(filter, QoS::AtLeastOnce) {
                acks.subscribes.queued.pop_back();
                return Err(error).with_context(|| format!("subscribing to {filter}"));
            }
        }
        await_ack(acked, "SUBACK", filter).await
    }

    /// Publishes `body` at QoS 1 and waits for the PUBACK.
    pub async fn publish_json(&self, topic: &str, body: &Value) -> Result<()> {
        let payload = serde_json::to_vec(body).context("serialising the message")?;
        self.publish(topic, payload).await
    }

    /// Publishes raw bytes (e.g. malformed JSON) at QoS 1 and waits for the PUBACK.
    ///
    /// # Errors
    ///
    /// When the connection closes first (RabbitMQ closes it on a forbidden topic; there is no
    /// negative PUBACK in MQTT 3.1.1), or no PUBACK comes in time.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<()> {
        let (waiter, acked) = oneshot::channel();
        {
            let mut acks = lock(&self.acks);
            acks.publishes.queued.push_back(waiter);
            if let Err(error) = self.client.try_publish(topic, QoS::AtLeastOnce, false, payload.into()) {
                acks.publishes.queued.pop_back();
                return Err(error).with_context(|| format!("publishing to {topic}"));
            }
        }
        await_ack(acked, "PUBACK", topic).await
    }

    /// The next message, or `None` if none arrived `within` (or the event loop ended).
    pub async fn recv(&mut self, within: Duration) -> Option<Received> {
        timeout(within, self.received.recv()).await.ok().flatten()
    }

    /// The next `n` messages, all within `within`.
    pub async fn recv_n(&mut self, n: usize, within: Duration) -> Result<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut messages = Vec::with_capacity(n);
        while messages.len() < n {
            match tokio::time::timeout_at(deadline, self.received.recv()).await {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => bail!(
                    "{} of {n} messages received, then the event loop of {} ended",
                    messages.len(),
                    self.client_id
                ),
                Err(_) => bail!("{} of {n} messages received within {within:?} by {}", messages.len(), self.client_id),
            }
        }
        Ok(messages)
    }

    /// Whether the connection is down now (closed by the broker, lost, or never up).
    pub fn is_disconnected(&self) -> bool {
        !*self.link.borrow()
    }

    /// Waits until the connection is down, e.g. the broker closed it after a forbidden publish.
    pub async fn wait_disconnected(&self, within: Duration) -> Result<()> {
        self.wait_link(false, within).await
    }

    /// Waits until a persistent session is connected again, e.g. after a broker restart.
    pub async fn wait_connected(&self, within: Duration) -> Result<()> {
        self.wait_link(true, within).await
    }

    async fn wait_link(&self, connected: bool, within: Duration) -> Result<()> {
        let mut link = self.link.clone();
        let state = if connected { "connected" } else { "disconnected" };
        match timeout(within, link.wait_for(|up| *up == connected)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => bail!("the event loop of {} ended", self.client_id),
            Err(_) => bail!("{} not {state} within {within:?}", self.client_id),
        }
    }

    /// Sends DISCONNECT (a clean close: no last will, a persistent session stays) and waits for
    /// the event loop to end.
    pub async fn disconnect(mut self) -> Result<()> {
        if self.event_loop.is_finished() {
            return Ok(());
        }
        self.client.disconnect().await.with_context(|| format!("disconnecting {}", self.client_id))?;
        timeout(ACK_TIMEOUT, &mut self.event_loop)
            .await
            .with_context(|| format!("{} still running after DISCONNECT", self.client_id))?
            .context("the MQTT event loop panicked")
    }
}

impl Drop for MqttUser {
    fn drop(&mut self) {
        self.event_loop.abort();
    }
}

async fn await_ack(acked: oneshot::Receiver<Result<(), String>>, ack: &str, topic: &str) -> Result<()> {
    match timeout(ACK_TIMEOUT, acked).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(why))) => bail!("no {ack} for {topic}: {why}"),
        Ok(Err(_)) => bail!("no {ack} for {topic}: the MQTT event loop ended"),
        Err(_) => bail!("no {ack} for {topic} within {ACK_TIMEOUT:?}"),
    }
}

/// Owns the rumqttc event loop: polls it, forwards what arrives and settles the [`Acks`].
struct Driver {
    event_loop: EventLoop,
    reconnect: bool,
    acks: Arc<Mutex<Acks>>,
    link: watch::Sender<bool>,
    received: mpsc::UnboundedSender<Received>,
}

impl Driver {
    async fn run(mut self, connack: oneshot::Sender<Result<(), ConnectError>>) {
        let mut connack = Some(connack);
        loop {
            match self.event_loop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    self.link.send_replace(true);
                    if let Some(connack) = connack.take() {
                        let _ = connack.send(Ok(()));
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    // The receiver may be gone while the user is being dropped.
                    let _ = self.received.send(Received {
                        topic: publish.topic,
                        payload: publish.payload.to_vec(),
                        retain: publish.retain,
                    });
                }
                Ok(Event::Incoming(Packet::PubAck(puback))) => {
                    lock(&self.acks).publishes.acked(puback.pkid, Ok(()));
                }
                Ok(Event::Incoming(Packet::SubAck(suback))) => {
                    let result = if suback.return_codes.iter().any(|code| matches!(code, SubscribeReasonCode::Failure))
                    {
                        Err(format!("SUBACK refused: {:?}", suback.return_codes))
                    } else {
                        Ok(())
                    };
                    lock(&self.acks).subscribes.acked(suback.pkid, result);
                }
                // QoS 0 publishes have packet id 0 and no PUBACK; this client sends none.
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                    lock(&self.acks).publishes.sent(pkid);
                }
                Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => {
                    lock(&self.acks).subscribes.sent(pkid);
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(error) => {
                    if let Some(connack) = connack.take() {
                        let _ = connack.send(Err(match error {
                            ConnectionError::ConnectionRefused(code) => ConnectError::Refused(code),
                            other => ConnectError::Other(anyhow!(other).context("MQTT connect to 127.0.0.1")),
                        }));
                        break;
                    }
                    if self.link.send_replace(false) {
                        // The connection was up: rumqttc moved what was in flight or queued to
                        // `pending` to re-send it. Drop it, and fail its waiters: an ack after
                        // the reconnect could not be told apart from one for a new packet.
                        self.event_loop.pending.clear();
                        let why = format!("connection lost: {error}");
                        let mut acks = lock(&self.acks);
                        acks.publishes.fail_all(&why);
                        acks.subscribes.fail_all(&why);
                    }
                    if !self.reconnect {
                        break;
                    }
                    tokio::time::sleep(RECONNECT_DELAY).await;
                }
            }
        }
        self.link.send_replace(false);
        let mut acks = lock(&self.acks);
        acks.publishes.fail_all("the MQTT client stopped");
        acks.subscribes.fail_all("the MQTT client stopped");
    }
}
