//! The policy chain alone (0, 1 and 3 example plugins configured to pass, ~300-byte message)
//! and a reload from the compile cache. Run: `plugins/build.sh && cargo bench -p inboxd --bench chain`.
//! Each plugin is called only for the hook it uses (`INBOXD_BENCH_ALL_HOOKS=1`: both hooks).
//! Besides criterion's report it writes per-message costs to target/bench/chain.json.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use inboxd::chat21::{Message, normalise};
use inboxd::plugin::{ChainBuilder, Compiler, PluginConfig, PluginsConfig};
use inboxd::policy::{AcceptAll, Hooks, Policy, PolicyChain, PolicyHandle};
use serde_json::{Value, json};

#[path = "../../plugins/built.rs"]
mod built;
use built::built_plugin;

/// Warm calls timed for the JSON summary, per configuration.
const ITERATIONS: u32 = 50_000;
/// Reloads timed for the JSON summary.
const RELOADS: u32 = 20;

fn plugins(count: usize, cache_dir: &Path) -> PluginsConfig {
    // Checks that the plugins are built (the message says how).
    let dir = built_plugin("rust-redactor").parent().expect("a file in a directory").to_owned();
    let (message, deliver) =
        (Hooks { on_message: true, on_deliver: false }, Hooks { on_message: false, on_deliver: true });
    let all = [
        ("rust-redactor", json!({}), message),
        ("rust-blocklist", json!({"blocked": {"carol": ["mallory"]}}), deliver),
        ("rust-ratelimit", json!({"max": u32::MAX, "window_ms": 60_000}), message),
    ];
    let chain = all[..count]
        .iter()
        .map(|(name, config, hooks)| {
            let mut spec = PluginConfig::for_file(&dir.join(format!("{name}.wasm")));
            spec.config_json = config.to_string();
            spec.hooks = if std::env::var_os("INBOXD_BENCH_ALL_HOOKS").is_some() { Hooks::BOTH } else { *hooks };
            spec
        })
        .collect();
    PluginsConfig { dir, cache_dir: cache_dir.to_owned(), watch: false, chain }
}

/// A direct message of about 300 bytes once normalised, with nothing to redact or block.
fn message() -> Message {
    let body = json!({
        "text": "Hello Bob, are we still on for the design review tomorrow at ten? I will bring the notes.",
        "type": "text",
        "sender_fullname": "Alice Liddell",
        "recipient_fullname": "Bob Builder",
        "channel_type": "direct",
        "attributes": {"client": "web"},
    });
    let Value::Object(body) = body else { unreachable!("a JSON object literal") };
    normalise("tilechat", "alice", "bob", body, "6f1c2a9e-0b7d-4a51-9a3e-1c2d3e4f5a6b".into(), 1_700_000_000_000)
}

/// One message through the policy: on-message, then on-deliver for the sender's and the recipient's copy.
fn route(policy: &dyn Policy, message: &Message) {
    black_box(policy.on_message(message));
    black_box(policy.on_deliver(message, "alice"));
    black_box(policy.on_deliver(message, "bob"));
}

/// CPU time of this thread: unlike wall time, it does not grow when other processes compete
/// for the cores (this 2-core machine is often shared with builds).
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// (wall time, CPU time) per call of `f`, after a warm-up.
fn time_per_call(mut f: impl FnMut()) -> (u128, u128) {
    for _ in 0..1_000 {
        f();
    }
    let (wall, cpu) = (Instant::now(), thread_cpu_time());
    for _ in 0..ITERATIONS {
        f();
    }
    ((wall.elapsed() / ITERATIONS).as_nanos(), ((thread_cpu_time() - cpu) / ITERATIONS).as_nanos())
}

fn main() {
    let cache = tempfile::tempdir().expect("a temporary cache directory");
    let message = message();
    let payload_bytes = serde_json::to_string(&message.body).expect("serialisable").len();
    let builder = ChainBuilder::new(1, Compiler::InProcess);
    let chains: Vec<(usize, Arc<dyn Policy>)> = [0, 1, 3]
        .into_iter()
        .map(|n| {
            let chain: Arc<dyn Policy> = if n == 0 {
                Arc::new(AcceptAll)
            } else {
                Arc::new(builder.build(&plugins(n, cache.path())).expect("the example plugins load"))
            };
            (n, chain)
        })
        .collect();

    let mut criterion = Criterion::default().configure_from_args();
    for (n, chain) in &chains {
        criterion.bench_function(&format!("chain/{n}-plugins/message"), |b| b.iter(|| route(chain.as_ref(), &message)));
        criterion.bench_function(&format!("chain/{n}-plugins/on-message"), |b| {
            b.iter(|| black_box(chain.on_message(&message)))
        });
    }
    let three = plugins(3, cache.path());
    let handle = PolicyHandle::new(Arc::new(AcceptAll));
    criterion.bench_function("reload/3-plugins-from-cache", |b| {
        b.iter(|| handle.replace(Arc::new(builder.build(&three).expect("reload"))))
    });
    criterion.final_summary();

    let mut costs = serde_json::Map::new();
    for (n, chain) in &chains {
        let (message_ns, message_cpu_ns) = time_per_call(|| route(chain.as_ref(), &message));
        let (on_message_ns, on_message_cpu_ns) = time_per_call(|| {
            black_box(chain.on_message(&message));
        });
        costs.insert(
            n.to_string(),
            json!({
                "message_ns": message_ns,
                "message_cpu_ns": message_cpu_ns,
                "on_message_ns": on_message_ns,
                "on_message_cpu_ns": on_message_cpu_ns,
            }),
        );
    }
    let cpu = |n: &str| costs[n]["message_cpu_ns"].as_u64().unwrap_or(0);
    let (base, one_ns, three_ns) = (cpu("0"), cpu("1"), cpu("3"));
    let reloads: Vec<(Duration, Duration)> = (0..RELOADS)
        .map(|_| {
            let (wall, cpu) = (Instant::now(), thread_cpu_time());
            let chain: PolicyChain = builder.build(&three).expect("reload");
            handle.replace(Arc::new(chain));
            (wall.elapsed(), thread_cpu_time() - cpu)
        })
        .collect();
    let cpu_mean = reloads.iter().map(|r| r.1).sum::<Duration>() / RELOADS;
    let reloads: Vec<Duration> = reloads.into_iter().map(|r| r.0).collect();
    let mean = reloads.iter().sum::<Duration>() / RELOADS;
    let max = reloads.iter().max().copied().unwrap_or_default();
    let summary = json!({
        "payload_bytes": payload_bytes,
        "message": "a direct message: on-message, then on-deliver for the sender's and the recipient's copy",
        "hooks": if std::env::var_os("INBOXD_BENCH_ALL_HOOKS").is_some() { "both" } else { "as used by each plugin" },
        "chains": costs,
        "per_plugin_per_message_cpu_ns": {
            "one_plugin": one_ns.saturating_sub(base),
            "three_plugins_average": three_ns.saturating_sub(base) / 3,
        },
        "reload_3_plugins_from_cache_ms": {
            "mean": mean.as_secs_f64() * 1e3,
            "max": max.as_secs_f64() * 1e3,
            "cpu_mean": cpu_mean.as_secs_f64() * 1e3,
        },
        "load_average": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "targets": {"per_plugin_per_message_ns": 3000, "reload_ms": 100},
    });
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).expect("creating target/bench");
    let text = serde_json::to_string_pretty(&summary).expect("serialisable");
    std::fs::write(out.join("chain.json"), &text).expect("writing target/bench/chain.json");
    println!("{text}");
}
