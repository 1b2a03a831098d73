//! One load process: its share of sender/recipient pairs (or groups) over MQTT with real JWTs,
//! sending at a window or a rate and recording what each recipient receives and how late.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use inboxd_e2e::jwt::{Issuer, TokenOptions};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// QoS 1 publishes a sender keeps in flight towards the broker (PUBACK pending).
const MQTT_INFLIGHT: u16 = 100;

/// What one load process does; sent by the coordinator as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    pub mqtt_host: String,
    /// The broker nodes' MQTT ports: pair i connects to `mqtt_ports[i % len]`.
    pub mqtt_ports: Vec<u16>,
    pub jwt_secret: String,
    pub jwt_kid: String,
    pub app: String,
    /// This process's pairs (or groups): `first..first + count`.
    pub first: usize,
    pub count: usize,
    /// 0: direct messages; n ≥ 2: groups of n users (one sender, n − 1 receiving members).
    pub group_size: usize,
    /// Closed loop: messages a pair has sent but its recipient has not received yet.
    pub window: usize,
    /// Open loop when > 0: messages per second per pair (the window still caps what is in flight).
    pub rate_per_pair: f64,
    pub warmup_ms: u64,
    pub measure_ms: u64,
    /// After sending stops, how long to wait for what is still on its way.
    pub drain_ms: u64,
    /// MQTT QoS of publishes and subscriptions: 0 (as chat21's own clients publish) or 1.
    pub qos: u8,
}

impl Spec {
    fn qos(&self) -> QoS {
        if self.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce }
    }
}

/// What one load process measured.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// Messages published (all phases), and those the broker accepted (PUBACK; at QoS 0, those
    /// written to the connection).
    pub sent: u64,
    pub accepted: u64,
    /// Copies expected at recipients: `accepted` × receivers per message.
    pub expected: u64,
    /// Copies received, and distinct ones among them.
    pub received: u64,
    pub unique: u64,
    /// Copies received during the measuring window, and their latencies in microseconds.
    pub window_received: u64,
    pub latencies_us: Vec<u64>,
    /// The slowest of those copies sent in each second of the window, in microseconds (0: none),
    /// to place a stall in time.
    pub max_by_second_us: Vec<u64>,
    /// This process's CPU time during the window.
    pub cpu_window_us: u64,
}

/// One pair's (or group's) shared state between its sender and its receivers.
struct Flow {
    book: Mutex<Book>,
    progress: Notify,
}

#[derive(Default)]
struct Book {
    sent: u64,
    accepted: u64,
    /// Per receiver: which sequence numbers arrived.
    seen: Vec<Vec<bool>>,
    received: u64,
    unique: u64,
    /// Distinct copies at the first receiver (the window's reference).
    first_unique: u64,
    window_received: u64,
    /// The window's copies: when each was sent and its latency, in microseconds.
    window_copies: Vec<(u64, u64)>,
}

/// The phase boundaries, in microseconds since the Unix epoch.
#[derive(Clone, Copy)]
struct Clock {
    window_start: u64,
    window_end: u64,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Connects every user of `spec`, then waits for `start` (a future the coordinator completes),
/// runs the phases and returns what was measured.
///
/// # Errors
/// When a user cannot connect or subscribe.
pub async fn run(spec: Spec, start: impl Future<Output = Result<()>>) -> Result<Outcome> {
    let issuer = Issuer::new(&spec.jwt_secret, &spec.jwt_kid);
    let receivers_per_flow = if spec.group_size == 0 { 1 } else { spec.group_size - 1 };
    let mut tasks = JoinSet::new();
    let mut senders = Vec::with_capacity(spec.count);
    let mut flows = Vec::with_capacity(spec.count);
    for index in spec.first..spec.first + spec.count {
        let flow = Arc::new(Flow {
            book: Mutex::new(Book { seen: vec![Vec::new(); receivers_per_flow], ..Book::default() }),
            progress: Notify::new(),
        });
        let sender = format!("s{index}");
        let receivers: Vec<String> = (0..receivers_per_flow).map(|r| format!("r{index}x{r}")).collect();
        for (slot, receiver) in receivers.iter().enumerate() {
            let (client, events) = connect(&spec, &issuer, receiver, index).await?;
            let filter = format!("apps/{}/users/{receiver}/#", spec.app);
            client.subscribe(&filter, spec.qos()).await?;
            let events = await_suback(events).await.with_context(|| format!("subscribing {receiver}"))?;
            tasks.spawn(receive(events, client, Arc::clone(&flow), slot));
        }
        let (client, events) = connect(&spec, &issuer, &sender, index).await?;
        tasks.spawn(drive(events, Arc::clone(&flow), spec.qos()));
        let destination = if spec.group_size == 0 { receivers[0].clone() } else { format!("group-b{index}") };
        senders.push((client, sender, destination, receivers));
        flows.push(flow);
    }
    start.await?;
    let started = now_us();
    let clock = Clock {
        window_start: started + spec.warmup_ms * 1000,
        window_end: started + (spec.warmup_ms + spec.measure_ms) * 1000,
    };
    let mut sending = JoinSet::new();
    for ((client, sender, destination, receivers), flow) in senders.into_iter().zip(&flows) {
        sending.spawn(send(spec.clone(), client, sender, destination, receivers, Arc::clone(flow), clock));
    }
    let self_pid = std::process::id();
    sleep_until_us(clock.window_start).await;
    let cpu_before = crate::proc_stat::sample(self_pid)?;
    sleep_until_us(clock.window_end).await;
    let cpu_after = crate::proc_stat::sample(self_pid)?;
    while let Some(sent) = sending.join_next().await {
        sent.context("a sender panicked")??;
    }
    drain(&flows, receivers_per_flow, Duration::from_millis(spec.drain_ms)).await;
    tasks.abort_all();
    let mut outcome = Outcome {
        cpu_window_us: cpu_after.cpu.saturating_sub(cpu_before.cpu).as_micros() as u64,
        max_by_second_us: vec![0; spec.measure_ms.div_ceil(1000) as usize],
        ..Outcome::default()
    };
    for flow in &flows {
        let book = flow.book.lock().unwrap_or_else(PoisonError::into_inner);
        outcome.sent += book.sent;
        outcome.accepted += book.accepted;
        outcome.expected += book.accepted * receivers_per_flow as u64;
        outcome.received += book.received;
        outcome.unique += book.unique;
        outcome.window_received += book.window_received;
        for &(sent_at, latency_us) in &book.window_copies {
            outcome.latencies_us.push(latency_us);
            let second = usize::try_from(sent_at.saturating_sub(clock.window_start) / 1_000_000).unwrap_or(usize::MAX);
            if let Some(slowest) = outcome.max_by_second_us.get_mut(second) {
                *slowest = (*slowest).max(latency_us);
            }
        }
    }
    Ok(outcome)
}

async fn connect(spec: &Spec, issuer: &Issuer, user: &str, pair: usize) -> Result<(AsyncClient, EventLoop)> {
    let token = issuer.mint(user, &spec.app, &TokenOptions::default())?;
    let client_id = format!("{user}-{}", uuid::Uuid::new_v4().simple());
    let port = spec.mqtt_ports[pair % spec.mqtt_ports.len()];
    let mut options = MqttOptions::new(client_id, &spec.mqtt_host, port);
    options.set_credentials(user, token).set_keep_alive(Duration::from_secs(60)).set_inflight(MQTT_INFLIGHT);
    let (client, mut events) = AsyncClient::new(options, 1024);
    loop {
        match events.poll().await.with_context(|| format!("connecting {user} over MQTT"))? {
            Event::Incoming(Packet::ConnAck(_)) => return Ok((client, events)),
            _ => continue,
        }
    }
}

async fn await_suback(mut events: EventLoop) -> Result<EventLoop> {
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = events.poll().await? {
            return Ok(events);
        }
    }
}

/// Drives a sender's connection until aborted, counting PUBACKs (at QoS 0, publishes written):
/// a message the broker never accepted (the connection broke first) is the tool's loss, not the
/// observer's.
async fn drive(mut events: EventLoop, flow: Arc<Flow>, qos: QoS) -> Result<()> {
    loop {
        let accepted = match events.poll().await.context("sender connection")? {
            Event::Incoming(Packet::PubAck(_)) => true,
            Event::Outgoing(Outgoing::Publish(_)) => qos == QoS::AtMostOnce,
            _ => false,
        };
        if accepted {
            flow.book.lock().unwrap_or_else(PoisonError::into_inner).accepted += 1;
        }
    }
}

/// Records every copy a receiver gets until aborted. `_client` keeps the connection open.
async fn receive(mut events: EventLoop, _client: AsyncClient, flow: Arc<Flow>, slot: usize) -> Result<()> {
    loop {
        let Event::Incoming(Packet::Publish(publish)) = events.poll().await.context("receiver connection")? else {
            continue;
        };
        let arrived = now_us();
        let body: Value = serde_json::from_slice(&publish.payload).context("a copy that is not JSON")?;
        let attributes = &body["attributes"];
        let (Some(seq), Some(sent_at)) = (attributes["bench_seq"].as_u64(), attributes["bench_ts_us"].as_u64()) else {
            continue;
        };
        let window = attributes["bench_window"].as_bool() == Some(true);
        let mut book = flow.book.lock().unwrap_or_else(PoisonError::into_inner);
        book.received += 1;
        let seen = &mut book.seen[slot];
        let seq = seq as usize;
        if seen.len() <= seq {
            seen.resize(seq + 1, false);
        }
        if !std::mem::replace(&mut seen[seq], true) {
            book.unique += 1;
            if slot == 0 {
                book.first_unique += 1;
            }
            if window {
                book.window_received += 1;
                book.window_copies.push((sent_at, arrived.saturating_sub(sent_at)));
            }
        }
        drop(book);
        flow.progress.notify_one();
    }
}

/// Sends until the window ends: at most `window` unanswered messages, at `rate_per_pair` if set.
async fn send(
    spec: Spec,
    client: AsyncClient,
    sender: String,
    destination: String,
    receivers: Vec<String>,
    flow: Arc<Flow>,
    clock: Clock,
) -> Result<()> {
    let topic = format!("apps/{}/outgoing/users/{sender}/messages/{destination}/outgoing", spec.app);
    let interval = (spec.rate_per_pair > 0.0).then(|| Duration::from_secs_f64(1.0 / spec.rate_per_pair));
    let first_send = now_us();
    let mut seq: u64 = 0;
    loop {
        if let Some(interval) = interval {
            sleep_until_us(first_send + (interval.as_micros() as u64) * seq).await;
        }
        loop {
            let notified = flow.progress.notified();
            let in_flight = {
                let book = flow.book.lock().unwrap_or_else(PoisonError::into_inner);
                book.sent - book.first_unique
            };
            if in_flight < spec.window as u64 {
                break;
            }
            notified.await;
        }
        let sent_at = now_us();
        if sent_at >= clock.window_end {
            return Ok(());
        }
        let mut body = json!({
            "text": format!("bench message {seq} from {sender}: hello, how are things going today?"),
            "type": "text",
            "sender_fullname": "Bench Sender",
            "attributes": {"bench_seq": seq, "bench_ts_us": sent_at, "bench_window": sent_at >= clock.window_start},
        });
        if spec.group_size > 0 {
            let members: serde_json::Map<String, Value> =
                receivers.iter().chain([&sender]).map(|member| (member.clone(), json!(1))).collect();
            body["channel_type"] = json!("group");
            body["group"] = json!({"members": members});
        }
        client.publish(&topic, spec.qos(), false, serde_json::to_vec(&body)?).await?;
        flow.book.lock().unwrap_or_else(PoisonError::into_inner).sent += 1;
        seq += 1;
    }
}

/// Waits until every copy sent has arrived, or `within` has passed.
async fn drain(flows: &[Arc<Flow>], receivers_per_flow: usize, within: Duration) {
    let complete = async {
        for flow in flows {
            loop {
                let notified = flow.progress.notified();
                {
                    let book = flow.book.lock().unwrap_or_else(PoisonError::into_inner);
                    if book.unique >= book.accepted.max(book.sent) * receivers_per_flow as u64 {
                        break;
                    }
                }
                notified.await;
            }
        }
    };
    let _ = tokio::time::timeout(within, complete).await;
}

async fn sleep_until_us(at: u64) {
    let now = now_us();
    if at > now {
        tokio::time::sleep(Duration::from_micros(at - now)).await;
    }
}
