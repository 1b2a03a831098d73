//! The keyword/link filter written in Rust, JavaScript, Python and C (plugins/build-languages.sh
//! → target/plugins) in the real host: identical verdicts from all four, and `inboxd plugin test`.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use inboxd::chat21::{Message, normalise};
use inboxd::plugin::PluginConfig;
use inboxd::plugin::{CacheOutcome, LoadError, Runtime, WasmPlugin};
use inboxd::policy::{Decision, Hook, Link, Subject};
use serde_json::{Map, Value, json};

#[path = "../../plugins/built.rs"]
mod built;
use built::built_plugin;

/// The same policy in each language, as built into target/plugins.
const LANGUAGES: [&str; 4] = ["rust-keyword", "js-keyword", "python-keyword", "c-keyword"];

fn config() -> Value {
    json!({"words": ["badword", "Spam"], "allowed_domains": ["example.com", "chat21.org"]})
}

fn spec(name: &str, config: &Value) -> PluginConfig {
    let mut spec = PluginConfig::for_file(&built_plugin(name));
    spec.config_json = config.to_string();
    spec
}

/// One runtime and the four plugins with [`config`], loaded once for the whole test binary
/// (compiling the JS and Python components takes seconds, more in a debug build).
fn loaded() -> &'static [(&'static str, WasmPlugin)] {
    static LOADED: OnceLock<(Runtime, Vec<(&'static str, WasmPlugin)>)> = OnceLock::new();
    let (_, plugins) = LOADED.get_or_init(|| {
        let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-plugin-cache");
        let runtime = Runtime::new(Some(&cache), false).expect("a wasmtime runtime");
        let plugins = LANGUAGES
            .iter()
            .map(|name| {
                let plugin = WasmPlugin::load(&runtime, &spec(name, &config()), 1)
                    .unwrap_or_else(|e| panic!("loading {name}: {e}"));
                (*name, plugin)
            })
            .collect();
        (runtime, plugins)
    });
    plugins
}

fn message(body: Value) -> Message {
    let Value::Object(body) = body else { panic!("a message body is a JSON object") };
    normalise("tilechat", "alice", "bob", body, uuid::Uuid::new_v4().to_string(), 1_700_000_000_000)
}

fn text(text: &str) -> Message {
    message(json!({"text": text, "type": "text"}))
}

fn decide(plugin: &WasmPlugin, message: &Message) -> Decision {
    let json = serde_json::to_string(&message.body).unwrap();
    plugin.call(Hook::Message, Subject { message, json: &json }).unwrap_or_else(|f| panic!("plugin failed: {f}"))
}

fn reject(code: &str, reason: &str) -> Decision {
    Decision::Reject { code: code.into(), reason: reason.into(), notify_sender: true }
}

/// The shared test set: each message with the verdict every language must give.
fn cases() -> Vec<(&'static str, Message, Decision)> {
    let keyword = |word: &str| reject("keyword", &format!("the word \"{word}\" is not allowed"));
    let link = |host: &str| reject("link", &format!("links to {host} are not allowed"));
    let mut nested = Map::new();
    nested.insert("text".into(), "badword http://evil.com".into());
    vec![
        ("clean text", text("Hello Bob, see you at 10?"), Decision::Accept),
        ("a bad word", text("this is a badword here"), keyword("badword")),
        ("a bad word in punctuation", text("(badword)!"), keyword("badword")),
        ("a word inside another word", text("badwords and xbadword and spamming"), Decision::Accept),
        ("mixed case word", text("Buy SPAM now"), keyword("spam")),
        ("word order follows the config", text("spam, then badword"), keyword("badword")),
        ("allowed link", text("docs: https://example.com/a?b=1"), Decision::Accept),
        ("allowed subdomain", text("see https://docs.Example.COM:443/x and www.chat21.org"), Decision::Accept),
        ("forbidden link", text("click http://evil.com/win"), link("evil.com")),
        ("mixed case link", text("Visit WWW.Evil.COM today"), link("www.evil.com")),
        ("suffix that is not a subdomain", text("https://notexample.com"), link("notexample.com")),
        ("userinfo trick", text("https://example.com@evil.com/"), link("evil.com")),
        ("port and trailing dot", text("http://evil.com.:8080/"), link("evil.com")),
        ("first forbidden link wins", text("https://example.com then https://a.io and https://b.io"), link("a.io")),
        ("www inside a path is no link", text("https://example.com/www.evil.com"), Decision::Accept),
        ("unicode around a bad word", text("ünïcödé 😀 badword 😀"), keyword("badword")),
        ("unicode host", text("http://évil.com/"), link("évil.com")),
        ("empty host", text("just http:// and https://"), Decision::Accept),
        ("no text field", message(json!({"type": "image", "metadata": {"text": "badword"}})), Decision::Accept),
        ("text that is not a string", message(json!({"text": 42})), Decision::Accept),
        ("text only in nested fields", message(json!({"attributes": nested, "text": "fine"})), Decision::Accept),
    ]
}

#[test]
fn four_languages_give_identical_verdicts() {
    let mut wrong = Vec::new();
    for (case, message, expected) in cases() {
        for (name, plugin) in loaded() {
            let got = decide(plugin, &message);
            if got != expected {
                wrong.push(format!("{name}, {case}: got {got:?}, expected {expected:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "verdicts differ:\n{}", wrong.join("\n"));
}

#[test]
fn on_deliver_always_accepts() {
    for (name, plugin) in loaded() {
        let message = text("badword http://evil.com");
        let json = serde_json::to_string(&message.body).unwrap();
        let got = plugin.call(Hook::Deliver { inbox_of: "bob" }, Subject { message: &message, json: &json });
        assert_eq!(got, Ok(Decision::Accept), "{name}");
    }
}

#[test]
fn notify_sender_comes_from_the_config() {
    let runtime = Runtime::new(None, false).unwrap();
    let quiet = json!({"words": ["badword"], "notify_sender": false});
    // The small components are enough to check the flag; the big ones share the verdict test.
    for name in ["rust-keyword", "c-keyword"] {
        let plugin = WasmPlugin::load(&runtime, &spec(name, &quiet), 1).unwrap();
        let got = decide(&plugin, &text("badword"));
        let expected = Decision::Reject {
            code: "keyword".into(),
            reason: "the word \"badword\" is not allowed".into(),
            notify_sender: false,
        };
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn bad_configs_are_refused_by_every_language() {
    let runtime = Runtime::new(None, false).unwrap();
    for name in ["rust-keyword", "c-keyword"] {
        for bad in [json!({"wrods": []}), json!({"words": "badword"}), json!({"words": [""]}), json!([1])] {
            let err = WasmPlugin::load(&runtime, &spec(name, &bad), 1).err();
            assert!(matches!(err, Some(LoadError::InitRefused { .. })), "{name} with {bad}: {err:?}");
        }
    }
    // The JS and Python components: one refusal each, from the cache the verdict test filled.
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-plugin-cache");
    let cached = Runtime::new(Some(&cache), false).unwrap();
    loaded();
    for name in ["js-keyword", "python-keyword"] {
        let err = WasmPlugin::load(&cached, &spec(name, &json!({"wrods": []})), 1).err();
        assert!(
            matches!(&err, Some(LoadError::InitRefused { message, .. }) if message.contains("unknown key")),
            "{name}: {err:?}"
        );
    }
}

/// How fast a cached load is, is measured by `benches/languages.rs`; here: that it happens, and
/// that the cached component decides like the compiled one.
#[test]
fn large_components_load_from_the_cache_after_a_restart() {
    loaded();
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-plugin-cache");
    for name in ["js-keyword", "python-keyword"] {
        // A fresh runtime, as after a restart: read and map the compiled code, link, instantiate, init.
        let runtime = Runtime::new(Some(&cache), false).unwrap();
        let plugin = WasmPlugin::load(&runtime, &spec(name, &config()), 1).unwrap();
        assert_eq!(plugin.cache_outcome(), CacheOutcome::Hit, "{name}");
        for (case, message, expected) in cases() {
            assert_eq!(decide(&plugin, &message), expected, "{name} from the cache, {case}");
        }
    }
}

#[test]
fn plugin_test_prints_each_languages_verdict() {
    const EXPECTED_LINES: [&str; 4] =
        ["verdict: reject", "code: link", "reason: links to evil.com are not allowed", "notify-sender: true"];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("message.json");
    std::fs::write(&file, json!({"text": "see http://evil.com/x", "type": "text"}).to_string()).unwrap();
    for name in LANGUAGES {
        let output = Command::new(env!("CARGO_BIN_EXE_inboxd"))
            .args(["plugin", "test"])
            .arg(built_plugin(name))
            .arg("--message")
            .arg(&file)
            .args(["--config", &config().to_string(), "--repeat", "100"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{name}: {stdout}{}", String::from_utf8_lossy(&output.stderr));
        for line in EXPECTED_LINES {
            assert!(stdout.lines().any(|l| l == line), "{name}: no `{line}` in\n{stdout}");
        }
    }
}
