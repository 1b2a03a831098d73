//! Size and type limits (on-message): rejects a message whose `text` is longer than
//! `max_text_bytes`, whose whole JSON is over `max_json_bytes`, or whose `type` is not allowed.

use std::borrow::Cow;
use std::sync::OnceLock;

use inboxd::policy::types::Rejection;

wit_bindgen::generate!({ world: "policy", path: "../../wit" });

struct Limits {
    max_text_bytes: usize,
    max_json_bytes: usize,
    /// Allowed values of `type`; empty allows any.
    allowed_types: Vec<String>,
}

static LIMITS: OnceLock<Limits> = OnceLock::new();

/// The fields this plugin reads; the rest of the message is skipped, not parsed.
#[derive(serde::Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
}

struct SizeLimit;

impl Guest for SizeLimit {
    fn init(config: String) -> Result<(), String> {
        let config: serde_json::Value = serde_json::from_str(&config).map_err(|e| format!("config: {e}"))?;
        let number = |key: &str, default: usize| match config.get(key) {
            None => Ok(default),
            Some(v) => v.as_u64().map(|n| n as usize).ok_or(format!("config: `{key}` must be a non-negative integer")),
        };
        let allowed_types = match config.get("allowed_types") {
            None => Vec::new(),
            Some(v) => v
                .as_array()
                .ok_or("config: `allowed_types` must be a list of strings")?
                .iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect(),
        };
        let limits = Limits {
            max_text_bytes: number("max_text_bytes", 4096)?,
            max_json_bytes: number("max_json_bytes", 16 * 1024)?,
            allowed_types,
        };
        LIMITS.set(limits).map_err(|_| "init called twice".to_owned())
    }

    fn on_message(envelope: Envelope) -> Verdict {
        let Some(limits) = LIMITS.get() else { return Verdict::Accept };
        let reject = |code: &str, reason: String| {
            Verdict::Reject(Rejection { code: code.into(), reason, notify_sender: true })
        };
        if envelope.message_json.len() > limits.max_json_bytes {
            return reject("too-large", format!("the message is over {} bytes", limits.max_json_bytes));
        }
        let Ok(fields) = serde_json::from_str::<Fields>(&envelope.message_json) else {
            return Verdict::Accept;
        };
        if fields.text.as_deref().unwrap_or("").len() > limits.max_text_bytes {
            return reject("text-too-long", format!("the text is over {} bytes", limits.max_text_bytes));
        }
        let kind = fields.kind.as_deref().unwrap_or("text");
        if !limits.allowed_types.is_empty() && !limits.allowed_types.iter().any(|t| t == kind) {
            return reject("type-not-allowed", format!("messages of type `{kind}` are not allowed"));
        }
        Verdict::Accept
    }

    fn on_deliver(_envelope: Envelope, _inbox_of: String) -> Verdict {
        Verdict::Accept
    }
}

export!(SizeLimit);
