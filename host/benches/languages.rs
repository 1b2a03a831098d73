//! The keyword/link filter per language: size, cold compile, cached load, per-message cost, as the
//! table of docs/plugin-guide.md and target/bench/languages.json. Run: `cargo bench --bench languages`.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use inboxd::chat21::{Message, normalise};
use inboxd::plugin::PluginConfig;
use inboxd::plugin::{CacheOutcome, Runtime, WasmPlugin, sha256_hex};
use inboxd::policy::{Decision, Hook, Link, Subject};
use serde_json::{Value, json};

#[path = "../../plugins/built.rs"]
mod built;
use built::built_plugin;

const LANGUAGES: [&str; 4] = ["rust-keyword", "js-keyword", "python-keyword", "c-keyword"];
/// Cold compiles timed per language (the best is reported).
const COMPILES: u32 = 2;
/// Loads from the cache timed per language (the median is reported).
const LOADS: usize = 11;
/// Warm `on-message` calls timed per language and message.
const CALLS: u32 = 20_000;

/// A direct message of about 300 bytes once normalised; `text` decides the verdict.
fn message(text: &str) -> Message {
    let body = json!({
        "text": text,
        "type": "text",
        "sender_fullname": "Alice Liddell",
        "recipient_fullname": "Bob Builder",
        "channel_type": "direct",
        "attributes": {"client": "web"},
    });
    let Value::Object(body) = body else { unreachable!("a JSON object literal") };
    normalise("tilechat", "alice", "bob", body, "6f1c2a9e-0b7d-4a51-9a3e-1c2d3e4f5a6b".into(), 1_700_000_000_000)
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

/// (wall, CPU) time of one warm `on-message` call, after checking the verdict.
fn per_call(plugin: &WasmPlugin, message: &Message, expected: &str) -> (Duration, Duration) {
    let json = serde_json::to_string(&message.body).expect("serialisable");
    let subject = Subject { message, json: &json };
    let first = plugin.call(Hook::Message, subject).expect("the plugin answers");
    assert_eq!(first.as_str(), expected);
    for _ in 0..CALLS / 10 {
        black_box(plugin.call(Hook::Message, subject).ok());
    }
    let (wall, cpu) = (Instant::now(), thread_cpu_time());
    for _ in 0..CALLS {
        black_box(plugin.call(Hook::Message, subject).ok());
    }
    (wall.elapsed() / CALLS, (thread_cpu_time() - cpu) / CALLS)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let config = json!({"words": ["badword", "spam"], "allowed_domains": ["example.com"]}).to_string();
    let accept = message("Hello Bob, are we still on for the review tomorrow at ten? Notes: https://example.com/r");
    let reject = message("Hello Bob, are we still on for the review tomorrow at ten? Notes: https://evil.com/r");
    let mut rows = Vec::new();
    for name in LANGUAGES {
        let file = built_plugin(name);
        let wasm = std::fs::read(&file).expect("readable plugin");
        let digest = sha256_hex(&wasm);
        let cold = (0..COMPILES)
            .map(|_| {
                let runtime = Runtime::new(None, false).expect("runtime");
                let started = Instant::now();
                black_box(runtime.compile(&digest, &wasm).expect("compiles"));
                started.elapsed()
            })
            .min()
            .unwrap_or_default();

        let cache = tempfile::tempdir().expect("a temporary cache");
        let mut spec = PluginConfig::for_file(&file);
        spec.config_json = config.clone();
        let runtime = Runtime::new(Some(cache.path()), false).expect("runtime");
        let warmed = WasmPlugin::load(&runtime, &spec, 1).expect("loads");
        assert_eq!(warmed.cache_outcome(), CacheOutcome::Miss);
        let mut loads: Vec<(Duration, Duration)> = (0..LOADS)
            .map(|_| {
                // A fresh runtime each time, as after a restart: read, deserialize, link, instantiate, init.
                let runtime = Runtime::new(Some(cache.path()), false).expect("runtime");
                let (wall, cpu) = (Instant::now(), thread_cpu_time());
                let plugin = WasmPlugin::load(&runtime, &spec, 1).expect("loads");
                let elapsed = (wall.elapsed(), thread_cpu_time() - cpu);
                assert_eq!(plugin.cache_outcome(), CacheOutcome::Hit);
                elapsed
            })
            .collect();
        loads.sort();
        let cached = loads[LOADS / 2];

        let accept_call = per_call(&warmed, &accept, Decision::Accept.as_str());
        let reject_call = per_call(&warmed, &reject, "reject");
        rows.push(json!({
            "plugin": name,
            "component_bytes": wasm.len(),
            "cold_compile_ms": ms(cold),
            "cached_load_ms": ms(cached.0),
            "cached_load_cpu_ms": ms(cached.1),
            "on_message_accept_us": us(accept_call.0),
            "on_message_accept_cpu_us": us(accept_call.1),
            "on_message_reject_us": us(reject_call.0),
            "on_message_reject_cpu_us": us(reject_call.1),
        }));
    }

    println!("Wall time (thread CPU time in parentheses):\n");
    println!("| plugin | component | cold compile | load from cache | on-message, accept | on-message, reject |");
    println!("|---|---:|---:|---:|---:|---:|");
    for row in &rows {
        let f = |key: &str| row[key].as_f64().unwrap_or_default();
        println!(
            "| {} | {:.1} KB | {:.0} ms | {:.1} ms ({:.1}) | {:.1} µs ({:.1}) | {:.1} µs ({:.1}) |",
            row["plugin"].as_str().unwrap_or_default(),
            f("component_bytes") / 1e3,
            f("cold_compile_ms"),
            f("cached_load_ms"),
            f("cached_load_cpu_ms"),
            f("on_message_accept_us"),
            f("on_message_accept_cpu_us"),
            f("on_message_reject_us"),
            f("on_message_reject_cpu_us"),
        );
    }
    let summary = json!({
        "message_bytes": serde_json::to_string(&accept.body).map(|s| s.len()).unwrap_or_default(),
        "cached_load": "fresh runtime: read + deserialize the .cwasm + link + instantiate + init (median)",
        "cold_compile": "Component::new on the .wasm, no cache (best of runs; wall time, compiles on every core)",
        "cpu": "*_cpu_* fields: CPU time of the measuring thread, unaffected by other processes",
        "plugins": rows,
    });
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).expect("creating target/bench");
    let text = serde_json::to_string_pretty(&summary).expect("serialisable");
    std::fs::write(out.join("languages.json"), text).expect("writing target/bench/languages.json");
}
