//! The real example plugins (plugins/build.sh → target/plugins) in the real host: verdicts,
//! limits obeyed and violated, failure modes, the compile cache, reload and import refusal.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inboxd::chat21::{Message, normalise};
use inboxd::config::{Config, PluginConfig, PluginsConfig};
use inboxd::plugin::{CacheOutcome, Grant, Inspection, LoadError, Runtime, WasmPlugin};
use inboxd::policy::{
    ChainBuilder, FailureKind, FailureMode, Held, Link, PLUGIN_FAILED, Policy, PolicyChain, PolicyHandle, Reloader,
    Verdict,
};
use serde_json::{Value, json};

/// Where the built example plugins are: `INBOXD_TEST_PLUGINS`, else `<workspace>/target/plugins`.
fn plugin_file(name: &str) -> PathBuf {
    let dir = std::env::var_os("INBOXD_TEST_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    let file = dir.join(format!("{name}.wasm"));
    assert!(file.exists(), "{} is missing: run plugins/build.sh first (or set INBOXD_TEST_PLUGINS)", file.display());
    file
}

fn spec(name: &str, config: Value) -> PluginConfig {
    let mut spec = PluginConfig::for_file(&plugin_file(name));
    spec.config_json = config.to_string();
    spec
}

fn hostile(behaviour: &str, trigger: &str) -> PluginConfig {
    spec("rust-hostile", json!({"behaviour": behaviour, "trigger": trigger}))
}

fn runtime() -> Runtime {
    Runtime::new(None, false).unwrap()
}

fn load(runtime: &Runtime, spec: &PluginConfig) -> Arc<dyn Link> {
    Arc::new(WasmPlugin::load(runtime, spec, 2).unwrap_or_else(|e| panic!("loading {}: {e}", spec.name)))
}

fn chain(specs: &[PluginConfig]) -> PolicyChain {
    let runtime = runtime();
    PolicyChain::new(specs.iter().map(|s| load(&runtime, s)).collect())
}

fn message(sender: &str, text: &str) -> Message {
    let body = json!({"text": text, "type": "text"}).as_object().unwrap().clone();
    normalise("tilechat", sender, "bob", body, uuid::Uuid::new_v4().to_string(), 1)
}

fn rejection(verdict: &Verdict) -> (&str, &str, bool) {
    match verdict {
        Verdict::Reject(r) => (r.plugin.as_str(), r.code.as_str(), r.notify_sender),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn blocklist_hides_one_inbox_only() {
    let c = chain(&[spec("rust-blocklist", json!({"blocked": {"bob": ["mallory"]}}))]);
    let m = message("mallory", "hi");
    assert_eq!(c.on_message(&m), Verdict::Accept);
    assert_eq!(rejection(&c.on_deliver(&m, "bob")), ("rust-blocklist", "blocked", false));
    assert_eq!(c.on_deliver(&m, "carol"), Verdict::Accept);
    assert_eq!(c.on_deliver(&message("alice", "hi"), "bob"), Verdict::Accept);
}

#[test]
fn redactor_modifies_text_and_the_next_plugin_sees_it() {
    let c =
        chain(&[spec("rust-redactor", json!({"mask": "***"})), spec("rust-sizelimit", json!({"max_text_bytes": 40}))]);
    let Verdict::Modify(body) = c.on_message(&message("alice", "write to bob@example.com or +1 555 123 4567")) else {
        panic!("expected modify")
    };
    assert_eq!(body["text"], "write to *** or ***");
    assert_eq!(body["sender"], "alice");
    assert_eq!(c.on_message(&message("alice", "nothing to hide")), Verdict::Accept);
}

#[test]
fn ratelimit_counts_in_the_host_across_instances() {
    let c = chain(&[spec("rust-ratelimit", json!({"max": 3, "window_ms": 60_000}))]);
    for _ in 0..3 {
        assert_eq!(c.on_message(&message("alice", "hi")), Verdict::Accept);
    }
    let over = c.on_message(&message("alice", "hi"));
    assert_eq!(rejection(&over), ("rust-ratelimit", "rate-limited", true));
    assert_eq!(c.on_message(&message("bob", "hi")), Verdict::Accept);
}

#[test]
fn sizelimit_rejects_big_text_and_wrong_types() {
    let c = chain(&[spec("rust-sizelimit", json!({"max_text_bytes": 10, "allowed_types": ["text"]}))]);
    assert_eq!(c.on_message(&message("alice", "short")), Verdict::Accept);
    assert_eq!(rejection(&c.on_message(&message("alice", "far too long a text"))).1, "text-too-long");
    let mut image = message("alice", "x");
    image.body.insert("type".into(), "image".into());
    assert_eq!(rejection(&c.on_message(&image)).1, "type-not-allowed");
}

#[test]
fn hold_and_drop_end_the_chain() {
    let c = chain(&[hostile("hold", ""), spec("rust-redactor", json!({}))]);
    let held = Verdict::Hold(Held { plugin: "rust-hostile".into(), reason: "held for review".into() });
    assert_eq!(c.on_message(&message("alice", "mail a@b.io")), held);
    assert_eq!(chain(&[hostile("drop", "")]).on_message(&message("alice", "x")), Verdict::Drop);
}

#[test]
fn protected_fields_cannot_be_spoofed() {
    let m = message("alice", "hi");
    let Verdict::Modify(body) = chain(&[hostile("spoof", "")]).on_message(&m) else { panic!("expected modify") };
    assert_eq!(body["text"], "spoofed");
    assert_eq!(
        (&body["sender"], &body["recipient"], &body["message_id"], &body["app_id"]),
        (&json!("alice"), &json!("bob"), &json!(m.message_id), &json!("tilechat"))
    );
}

#[test]
fn invalid_modify_goes_through_the_failure_mode() {
    for behaviour in ["bad-json", "not-object"] {
        assert_eq!(rejection(&chain(&[hostile(behaviour, "")]).on_message(&message("a", "x"))).1, PLUGIN_FAILED);
        let mut open = hostile(behaviour, "");
        open.failure = FailureMode::FailOpen;
        assert_eq!(chain(&[open]).on_message(&message("a", "x")), Verdict::Accept);
    }
}

#[test]
fn infinite_loop_is_stopped_at_its_deadline() {
    let mut s = hostile("loop", "");
    s.deadline = Duration::from_millis(30);
    let link = load(&runtime(), &s);
    let m = message("alice", "x");
    let json = serde_json::to_string(&m.body).unwrap();
    let started = Instant::now();
    let failure = link.call(inboxd::policy::Hook::Message, inboxd::policy::Subject { message: &m, json: &json });
    let elapsed = started.elapsed();
    assert_eq!(failure.unwrap_err().kind, FailureKind::Timeout);
    assert!(elapsed >= Duration::from_millis(25) && elapsed < Duration::from_millis(300), "stopped after {elapsed:?}");
}

#[test]
fn memory_bomb_stays_under_the_cap() {
    let mut s = hostile("memory", "");
    s.memory_bytes = 16 << 20;
    let link = load(&runtime(), &s);
    let m = message("alice", "x");
    let json = serde_json::to_string(&m.body).unwrap();
    let failure = link.call(inboxd::policy::Hook::Message, inboxd::policy::Subject { message: &m, json: &json });
    assert_eq!(failure.unwrap_err().kind, FailureKind::OutOfMemory);
}

#[test]
fn a_trap_discards_the_instance_and_the_next_message_works() {
    let c = chain(&[hostile("trap", "boom"), spec("rust-ratelimit", json!({"max": 100}))]);
    assert_eq!(rejection(&c.on_message(&message("alice", "boom"))), ("rust-hostile", PLUGIN_FAILED, true));
    for _ in 0..3 {
        assert_eq!(c.on_message(&message("alice", "fine")), Verdict::Accept);
    }
    assert_eq!(rejection(&c.on_message(&message("alice", "boom again"))).1, PLUGIN_FAILED);
    assert_eq!(c.on_message(&message("alice", "fine")), Verdict::Accept);
}

#[test]
fn fuel_budget_is_obeyed_and_enforced() {
    let metered = Runtime::new(None, true).unwrap();
    let mut spinning = hostile("loop", "spin");
    spinning.fuel = Some(5_000_000);
    spinning.deadline = Duration::from_secs(10);
    let link = load(&metered, &spinning);
    let c = PolicyChain::new(vec![Arc::clone(&link)]);
    assert_eq!(c.on_message(&message("alice", "calm")), Verdict::Accept, "a normal call fits in the budget");
    let m = message("alice", "spin");
    let json = serde_json::to_string(&m.body).unwrap();
    let started = Instant::now();
    let failure = link.call(inboxd::policy::Hook::Message, inboxd::policy::Subject { message: &m, json: &json });
    assert_eq!(failure.unwrap_err().kind, FailureKind::OutOfFuel);
    assert!(started.elapsed() < Duration::from_secs(5));
    let err = WasmPlugin::load(&runtime(), &spinning, 1).err().unwrap();
    assert!(matches!(err, LoadError::FuelUnavailable { .. }), "{err}");
}

#[test]
fn fail_open_skips_a_failing_plugin() {
    let mut open = hostile("trap", "");
    open.failure = FailureMode::FailOpen;
    let c = chain(&[open, spec("rust-sizelimit", json!({"max_text_bytes": 3}))]);
    assert_eq!(rejection(&c.on_message(&message("alice", "too long"))).0, "rust-sizelimit");
    assert_eq!(c.on_message(&message("alice", "ok")), Verdict::Accept);
}

#[test]
fn sleeping_and_printing_cannot_stall_or_crash_the_host() {
    let started = Instant::now();
    assert_eq!(chain(&[hostile("sleep", "")]).on_message(&message("a", "x")), Verdict::Accept);
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut printing = hostile("print", "");
    assert_eq!(chain(&[printing.clone()]).on_message(&message("a", "x")), Verdict::Accept);
    printing.grants = vec![Grant::Stdio];
    let c = chain(&[printing]);
    // Plugins run on the blocking pool in the daemon, where WASI's own runtime use is allowed.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let verdict =
        rt.block_on(async move { tokio::task::spawn_blocking(move || c.on_message(&message("a", "x"))).await });
    let verdict = verdict.unwrap();
    assert_eq!(verdict, Verdict::Accept);
}

#[test]
fn init_problems_refuse_the_plugin() {
    let rt = runtime();
    let err = WasmPlugin::load(&rt, &spec("rust-blocklist", json!({"blocked": 3})), 1).err().unwrap();
    assert!(matches!(err, LoadError::InitRefused { .. }), "{err}");
    let err = WasmPlugin::load(&rt, &hostile("init-error", ""), 1).err().unwrap();
    assert!(err.to_string().contains("refuses every config"), "{err}");
    let mut slow = hostile("slow-init", "");
    slow.init_deadline = Duration::from_millis(50);
    let started = Instant::now();
    let err = WasmPlugin::load(&rt, &slow, 1).err().unwrap();
    assert!(matches!(err, LoadError::InitFailed { ref failure, .. } if failure.kind == FailureKind::Timeout), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn second_load_comes_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let s = spec("rust-redactor", json!({}));
    let first = WasmPlugin::load(&Runtime::new(Some(cache.path()), false).unwrap(), &s, 1).unwrap();
    assert_eq!(first.cache_outcome(), CacheOutcome::Miss);
    let restarted = Runtime::new(Some(cache.path()), false).unwrap();
    let started = Instant::now();
    let second = WasmPlugin::load(&restarted, &s, 1).unwrap();
    assert_eq!(second.cache_outcome(), CacheOutcome::Hit);
    assert!(started.elapsed() < Duration::from_secs(1), "cached load took {:?}", started.elapsed());
}

#[test]
fn components_importing_what_the_host_does_not_provide_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("http.wasm");
    let wasm = wat::parse_str(r#"(component (import "wasi:http/outgoing-handler@0.2.0" (instance)))"#).unwrap();
    std::fs::write(&file, wasm).unwrap();
    let err = WasmPlugin::load(&runtime(), &PluginConfig::for_file(&file), 1).err().unwrap();
    let text = err.to_string();
    assert!(matches!(err, LoadError::Refused { .. }), "{text}");
    assert!(text.contains("wasi:http/outgoing-handler@0.2.0") && text.contains("network"), "{text}");
    let inspection = Inspection::of_file(&file, &[]).unwrap();
    assert!(!inspection.loadable());
    assert!(inspection.to_string().contains("REFUSED"));
}

#[test]
fn check_reports_the_world_and_the_stdio_grant() {
    let file = plugin_file("rust-hostile");
    let plain = Inspection::of_file(&file, &[]).unwrap();
    assert!(plain.loadable() && plain.missing_exports().is_empty());
    assert!(plain.to_string().contains("output discarded"));
    assert!(Inspection::of_file(&file, &[Grant::Stdio]).unwrap().to_string().contains("granted `stdio`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_chain_and_keeps_it_on_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(plugin_file("rust-hostile"), dir.path().join("p.wasm")).unwrap();
    let config_path = dir.path().join("inboxd.toml");
    let write_config = |behaviour: &str| {
        let text = format!(
            "[plugins]\ndir = \".\"\n[[plugins.chain]]\nname = \"p\"\nfile = \"p.wasm\"\nconfig = {{ behaviour = \"{behaviour}\" }}\n"
        );
        std::fs::write(&config_path, text).unwrap();
    };
    write_config("drop");
    let config = Config::load(Some(&config_path), &Default::default()).unwrap();
    let builder = Arc::new(ChainBuilder::new(2));
    let first = builder.build(&config.plugins).unwrap();
    let handle = PolicyHandle::new(Arc::new(first));
    let reloader = Reloader::new(builder, handle.clone(), Some(config_path.clone()), Default::default());
    let in_flight = handle.current();
    assert_eq!(in_flight.on_message(&message("a", "x")), Verdict::Drop);

    write_config("hold");
    assert_eq!(reloader.reload().await.unwrap(), 1);
    assert!(matches!(handle.current().on_message(&message("a", "x")), Verdict::Hold(_)));
    assert_eq!(in_flight.on_message(&message("a", "x")), Verdict::Drop, "in-flight messages keep their chain");

    std::fs::write(dir.path().join("p.wasm"), b"not a component").unwrap();
    write_config("drop");
    let err = reloader.reload().await.unwrap_err();
    assert!(format!("{err:#}").contains("not a valid WebAssembly component"), "{err:#}");
    assert!(matches!(handle.current().on_message(&message("a", "x")), Verdict::Hold(_)), "the old chain stays");
}

#[test]
fn an_empty_chain_needs_no_runtime() {
    let plugins = PluginsConfig { dir: "nowhere".into(), cache_dir: "nowhere".into(), watch: false, chain: vec![] };
    let c = ChainBuilder::new(1).build(&plugins).unwrap();
    assert!(c.is_noop());
    assert!(!Path::new("nowhere").exists());
}
