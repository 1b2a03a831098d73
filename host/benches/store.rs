//! The SQLite store alone, as a worker commits: direct messages (two copies, two conversation rows
//! and an intent each) in commits of 1 to 26, among 20 to 4,000 users. Run: `cargo bench -p
//! inboxd --bench store [-- 20x26 ...]`. Prints the CPU per message (the commits, the log's
//! syncs and the history thread's passes), writes target/bench/store.json.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use inboxd::store::{Persistence, StoreUrl, Write};
use serde_json::json;

/// Messages committed before the clock starts (fills the conversations and the page cache).
const WARMUP: usize = 4_000;
/// Messages timed per shape.
const MEASURED: usize = 20_000;
/// Intents are settled in bulk, as the settle journal does, every this many messages.
const SETTLE_EVERY: usize = 64;

/// A direct message's copy of about 400 bytes, as `writes_for` stores it.
fn body(sender: &str, recipient: &str, id: &str, now: i64) -> Arc<str> {
    json!({
        "message_id": id, "sender": sender, "recipient": recipient, "app_id": "bench",
        "text": "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
        "type": "text", "channel_type": "direct", "sender_fullname": "Alice Liddell",
        "recipient_fullname": "Bob Builder", "attributes": {"client": "web"},
        "timestamp": now, "status": 150,
    })
    .to_string()
    .into()
}

/// The writes of direct message `n`: pair `n % pairs` of `users / 2`, sender and recipient taking
/// turns.
fn message(n: usize, users: usize, now: i64) -> (String, Vec<Write>) {
    let pair = n % (users / 2);
    let (a, b) = (format!("user-{}", 2 * pair), format!("user-{}", 2 * pair + 1));
    let (sender, recipient) = if (n / (users / 2)).is_multiple_of(2) { (a, b) } else { (b, a) };
    let id = uuid::Uuid::now_v7().to_string();
    let body = body(&sender, &recipient, &id, now);
    let copy = |inbox: &str, conversation: &str, status| Write::Message {
        inbox: inbox.to_owned(),
        conversation: conversation.to_owned(),
        message_id: id.clone(),
        status,
        sent_at: now,
        body: Arc::clone(&body),
        conversation_update: Some(true),
    };
    let writes = vec![
        Write::Intent { fingerprint: n as i64, message_id: id.clone(), created_at: now },
        copy(&sender, &recipient, 100),
        copy(&recipient, &sender, 150),
    ];
    (id, writes)
}

/// The process's CPU time: the committing thread's and the sync thread's.
fn process_cpu() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes one timespec the call is given.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &raw mut now) };
    assert_eq!(status, 0, "CLOCK_PROCESS_CPUTIME_ID");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

struct Measured {
    cpu_us_per_message: f64,
    wall_us_per_message: f64,
}

/// Commits `WARMUP + MEASURED` messages among `users` in commits of `per_commit`, on a fresh
/// database, each commit after the last (as a worker does: its acks wait for the syncs, it does
/// not); times the last `MEASURED` and the sync of the last commit.
fn shape(runtime: &tokio::runtime::Runtime, users: usize, per_commit: usize) -> Measured {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = StoreUrl::Sqlite(format!("sqlite://{}", dir.path().join("store.db").display()));
    let persistence =
        runtime.block_on(Persistence::start(&url, "bench", 1000)).expect("opening the store").expect("a SQLite store");
    let writer = persistence.writer.clone();
    let mut unsettled = Vec::new();
    let now = inboxd::clock::now_ms();
    let mut n = 0;
    let mut last = None;
    let mut started = None;
    while n < WARMUP + MEASURED {
        if started.is_none() && n >= WARMUP {
            started = Some((n, process_cpu(), Instant::now()));
        }
        let batch: Vec<Vec<Write>> = (n..n + per_commit)
            .map(|m| {
                let (id, writes) = message(m, users, now);
                unsettled.push(id);
                writes
            })
            .collect();
        n += per_commit;
        for durable in writer.submit_all(batch).expect("the writer runs") {
            last = Some(durable.wait_blocking().expect("committed"));
        }
        if unsettled.len() >= SETTLE_EVERY {
            let settled = unsettled.drain(..).map(|message_id| Write::Settled { message_id }).collect();
            for durable in writer.submit_all(vec![settled]).expect("the writer runs") {
                last = Some(durable.wait_blocking().expect("committed"));
            }
        }
    }
    runtime.block_on(last.expect("a commit").wait()).expect("synced");
    // What the history thread has not applied yet is part of the cost.
    runtime.block_on(persistence.store.apply_history()).expect("the queued history applied");
    let (first, cpu_start, wall_start) = started.expect("a timed part");
    let (cpu, wall) = (process_cpu() - cpu_start, wall_start.elapsed());
    runtime.block_on(persistence.stop());
    let per = |total: Duration| total.as_secs_f64() * 1e6 / (n - first) as f64;
    Measured { cpu_us_per_message: per(cpu), wall_us_per_message: per(wall) }
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    // Shapes named on the command line (`USERSxPER_COMMIT`, e.g. `20x26`): only those.
    let named: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with('-')).collect();
    let mut rows = Vec::new();
    println!("{:>6} {:>10} {:>12} {:>12}", "users", "per commit", "CPU µs/msg", "wall µs/msg");
    for users in [20, 400, 4_000] {
        for per_commit in [1, 3, 8, 26] {
            if !named.is_empty() && !named.contains(&format!("{users}x{per_commit}")) {
                continue;
            }
            let measured = shape(&runtime, users, per_commit);
            println!(
                "{users:>6} {per_commit:>10} {:>12.1} {:>12.1}",
                measured.cpu_us_per_message, measured.wall_us_per_message
            );
            rows.push(json!({
                "users": users,
                "messages_per_commit": per_commit,
                "cpu_us_per_message": measured.cpu_us_per_message,
                "wall_us_per_message": measured.wall_us_per_message,
            }));
        }
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).expect("creating target/bench");
    let text = serde_json::to_string_pretty(&json!({ "measured": MEASURED, "shapes": rows })).expect("JSON");
    std::fs::write(out.join("store.json"), text).expect("writing target/bench/store.json");
}
