//! Per-recipient blocklist (on-deliver): a user never receives messages from the senders they
//! blocked; config `{"blocked": {"bob": ["mallory"]}}`. The message still reaches everyone else.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use inboxd::policy::metrics::count;
use inboxd::policy::types::Rejection;

wit_bindgen::generate!({ world: "policy", path: "../../wit" });

/// Inbox owner → senders they blocked; set once per instance by `init`.
static BLOCKED: OnceLock<HashMap<String, HashSet<String>>> = OnceLock::new();

struct Blocklist;

impl Guest for Blocklist {
    fn init(config: String) -> Result<(), String> {
        let config: serde_json::Value = serde_json::from_str(&config).map_err(|e| format!("config: {e}"))?;
        let mut blocked = HashMap::new();
        if let Some(lists) = config.get("blocked") {
            let lists = lists.as_object().ok_or("config: `blocked` must be an object of lists")?;
            for (owner, senders) in lists {
                let senders = senders.as_array().ok_or_else(|| format!("config: `blocked.{owner}` must be a list"))?;
                let senders = senders.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect();
                blocked.insert(owner.clone(), senders);
            }
        }
        BLOCKED.set(blocked).map_err(|_| "init called twice".to_owned())
    }

    fn on_message(_envelope: Envelope) -> Verdict {
        Verdict::Accept
    }

    fn on_deliver(envelope: Envelope, inbox_of: String) -> Verdict {
        let blocks = BLOCKED.get().and_then(|b| b.get(&inbox_of)).is_some_and(|s| s.contains(&envelope.sender));
        if !blocks {
            return Verdict::Accept;
        }
        count("blocked", 1);
        Verdict::Reject(Rejection {
            code: "blocked".into(),
            reason: "the recipient blocked the sender".into(),
            notify_sender: false,
        })
    }
}

export!(Blocklist);
