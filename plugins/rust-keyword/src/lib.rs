//! Keyword and link filter (on-message), the reference for the JS, Python and C versions:
//! rejects `keyword` for a configured word in `text`, `link` for a link to a non-allowed domain.

use std::sync::OnceLock;

use inboxd::policy::log::log;
use inboxd::policy::metrics::count;
use inboxd::policy::types::{Field, Level, Rejection};
use serde_json::Value;

wit_bindgen::generate!({ world: "policy", path: "../../wit" });

/// Where a link starts; the host follows up to the first of [`HOST_END`].
const LINK_STARTS: [&str; 3] = ["http://", "https://", "www."];
/// Characters that end the authority part of a link.
const HOST_END: &[u8] = b" \t\r\n/?#\\";
/// Besides ASCII letters and digits, the characters after which `www.` is not a link start.
const WWW_AFTER: &[u8] = b"./@:-_";

struct Filter {
    /// Lower-cased (ASCII) words, matched on word boundaries.
    words: Vec<String>,
    /// Lower-cased domains; each allows itself and its subdomains.
    allowed_domains: Vec<String>,
    notify_sender: bool,
}

static FILTER: OnceLock<Filter> = OnceLock::new();

struct Keyword;

impl Guest for Keyword {
    fn init(config: String) -> Result<(), String> {
        let filter = parse_config(&config).map_err(|e| format!("config: {e}"))?;
        let fields = [
            Field { key: "words".into(), value: filter.words.len().to_string() },
            Field { key: "allowed_domains".into(), value: filter.allowed_domains.len().to_string() },
        ];
        log(Level::Debug, "keyword filter configured", &fields);
        FILTER.set(filter).map_err(|_| "init called twice".to_owned())
    }

    fn on_message(envelope: Envelope) -> Verdict {
        let Some(filter) = FILTER.get() else { return Verdict::Accept };
        let Ok(message) = serde_json::from_str::<Value>(&envelope.message_json) else { return Verdict::Accept };
        let Some(text) = message.get("text").and_then(Value::as_str) else { return Verdict::Accept };
        match filter.check(&text.to_ascii_lowercase()) {
            Some((code, reason)) => {
                count(code, 1);
                Verdict::Reject(Rejection { code: code.into(), reason, notify_sender: filter.notify_sender })
            }
            None => Verdict::Accept,
        }
    }

    fn on_deliver(_envelope: Envelope, _inbox_of: String) -> Verdict {
        Verdict::Accept
    }
}

export!(Keyword);

impl Filter {
    /// The rejection (code, reason) for lower-cased `text`: the first configured word found,
    /// else the first link to a domain that is not allowed.
    fn check(&self, text: &str) -> Option<(&'static str, String)> {
        if let Some(word) = self.words.iter().find(|w| contains_word(text, w)) {
            return Some(("keyword", format!("the word \"{word}\" is not allowed")));
        }
        let host = links(text).find(|host| !self.allowed(host))?;
        Some(("link", format!("links to {host} are not allowed")))
    }

    fn allowed(&self, host: &str) -> bool {
        self.allowed_domains
            .iter()
            .any(|d| host == d || host.strip_suffix(d.as_str()).is_some_and(|h| h.ends_with('.')))
    }
}

/// Whether `word` occurs in `text` (overlapping occurrences included) with no ASCII letter or
/// digit right before or after it.
fn contains_word(text: &str, word: &str) -> bool {
    let bytes = text.as_bytes();
    let alnum = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_alphanumeric);
    let matches = bytes.windows(word.len()).enumerate().filter(|(_, w)| *w == word.as_bytes());
    matches.into_iter().any(|(at, _)| (at == 0 || !alnum(at - 1)) && !alnum(at + word.len()))
}

/// The hosts of the links in `text`, in order: after `http://` or `https://`, or at `www.` when
/// that does not continue a word, host or path ([`WWW_AFTER`]); up to the first of
/// [`HOST_END`]; the part after the last `@`, before the first `:`, without trailing dots.
/// Empty hosts are skipped.
fn links(text: &str) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let continues = |at: usize| at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || WWW_AFTER.contains(&bytes[at - 1]));
    (0..bytes.len()).filter_map(move |at| {
        let start = LINK_STARTS.iter().find(|s| bytes[at..].starts_with(s.as_bytes()))?;
        let from = if *start != "www." {
            at + start.len()
        } else if continues(at) {
            return None;
        } else {
            at
        };
        let end = bytes[from..].iter().position(|b| HOST_END.contains(b)).map_or(bytes.len(), |n| from + n);
        let authority = &text[from..end];
        let host = authority.rsplit('@').next().unwrap_or(authority);
        let host = host.split(':').next().unwrap_or(host).trim_end_matches('.');
        (!host.is_empty()).then_some(host)
    })
}

fn parse_config(config: &str) -> Result<Filter, String> {
    let Value::Object(config) = serde_json::from_str(config).map_err(|e| e.to_string())? else {
        return Err("must be a JSON object".into());
    };
    let mut filter = Filter { words: Vec::new(), allowed_domains: Vec::new(), notify_sender: true };
    for (key, value) in config {
        match key.as_str() {
            "words" => filter.words = strings(&key, &value)?,
            "allowed_domains" => filter.allowed_domains = strings(&key, &value)?,
            "notify_sender" => filter.notify_sender = value.as_bool().ok_or("`notify_sender` must be a boolean")?,
            _ => return Err(format!("unknown key `{key}`")),
        }
    }
    Ok(filter)
}

/// A list of non-empty strings, lower-cased.
fn strings(key: &str, value: &Value) -> Result<Vec<String>, String> {
    let error = || format!("`{key}` must be a list of non-empty strings");
    let list = value.as_array().ok_or_else(error)?;
    list.iter().map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_ascii_lowercase).ok_or_else(error)).collect()
}
