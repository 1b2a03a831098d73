//! Redactor (on-message, modify): masks e-mail addresses and phone numbers in `text` with
//! `mask` from the config (default `[redacted]`); a message without any is accepted as is.

use std::borrow::Cow;
use std::sync::OnceLock;

use inboxd::policy::metrics::count;

wit_bindgen::generate!({ world: "policy", path: "../../wit" });

static MASK: OnceLock<String> = OnceLock::new();

/// Digits a run needs to count as a phone number (shorter runs are amounts, years, codes).
const MIN_PHONE_DIGITS: usize = 7;
const MAX_PHONE_DIGITS: usize = 15;

struct Redactor;

/// The one field this plugin reads; the rest of the message is skipped, not parsed.
#[derive(serde::Deserialize)]
struct Text<'a> {
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
}

impl Guest for Redactor {
    fn init(config: String) -> Result<(), String> {
        let config: serde_json::Value = serde_json::from_str(&config).map_err(|e| format!("config: {e}"))?;
        let mask = match config.get("mask") {
            None => "[redacted]".to_owned(),
            Some(m) => m.as_str().ok_or("config: `mask` must be a string")?.to_owned(),
        };
        MASK.set(mask).map_err(|_| "init called twice".to_owned())
    }

    fn on_message(envelope: Envelope) -> Verdict {
        let Ok(Text { text: Some(text) }) = serde_json::from_str::<Text>(&envelope.message_json) else {
            return Verdict::Accept;
        };
        // The common case, nothing to mask, is decided without rewriting anything.
        if !text.contains('@') && text.bytes().filter(u8::is_ascii_digit).count() < MIN_PHONE_DIGITS {
            return Verdict::Accept;
        }
        let mask = MASK.get().map_or("[redacted]", String::as_str);
        let (redacted, found) = redact(&text, mask);
        if found == 0 {
            return Verdict::Accept;
        }
        let Ok(serde_json::Value::Object(mut message)) = serde_json::from_str(&envelope.message_json) else {
            return Verdict::Accept;
        };
        count("redacted", found as u64);
        message.insert("text".into(), redacted.into());
        Verdict::Modify(serde_json::Value::Object(message).to_string())
    }

    fn on_deliver(_envelope: Envelope, _inbox_of: String) -> Verdict {
        Verdict::Accept
    }
}

/// `text` with e-mail addresses and phone numbers replaced by `mask`, and how many there were.
fn redact(text: &str, mask: &str) -> (String, usize) {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut found = 0;
    let mut i = 0;
    while i < chars.len() {
        if let Some(end) = email_at(&chars, i).or_else(|| phone_at(&chars, i)) {
            out.push_str(mask);
            found += 1;
            i = end;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    (out, found)
}

fn is_local(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._%+-".contains(c)
}

fn is_domain(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '-'
}

/// The end of an e-mail address starting exactly at `start`, if one does.
fn email_at(chars: &[char], start: usize) -> Option<usize> {
    if start > 0 && is_local(chars[start - 1]) || !is_local(chars[start]) {
        return None;
    }
    let at = start + chars[start..].iter().position(|c| !is_local(*c))?;
    if chars[at] != '@' || at == start {
        return None;
    }
    let mut end = at + 1 + chars[at + 1..].iter().position(|c| !is_domain(*c)).unwrap_or(chars.len() - at - 1);
    while end > at + 1 && matches!(chars[end - 1], '.' | '-') {
        end -= 1;
    }
    let domain: String = chars[at + 1..end].iter().collect();
    let tld = domain.rsplit_once('.')?.1;
    (tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic())).then_some(end)
}

/// The end of a phone number starting exactly at `start`, if one does.
fn phone_at(chars: &[char], start: usize) -> Option<usize> {
    let first = chars[start];
    if !(first.is_ascii_digit() || first == '+' || first == '(') {
        return None;
    }
    if start > 0 && (chars[start - 1].is_ascii_alphanumeric() || chars[start - 1] == '+') {
        return None;
    }
    let mut digits = 0;
    let mut end = start;
    for (offset, c) in chars[start..].iter().enumerate() {
        if c.is_ascii_digit() {
            digits += 1;
            end = start + offset + 1;
        } else if !(" -.()".contains(*c) || (*c == '+' && offset == 0)) {
            break;
        }
    }
    let followed_by_word = chars.get(end).is_some_and(|c| c.is_alphanumeric());
    ((MIN_PHONE_DIGITS..=MAX_PHONE_DIGITS).contains(&digits) && !followed_by_word).then_some(end)
}

export!(Redactor);

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn masks_addresses_and_numbers_only() {
        let (text, n) = redact("mail bob.smith+x@example.co.uk or call +39 333 123 4567.", "*");
        assert_eq!((text.as_str(), n), ("mail * or call *.", 2));
        let (text, n) = redact("meet at 10:30, 3 people, room 1204", "*");
        assert_eq!((text.as_str(), n), ("meet at 10:30, 3 people, room 1204", 0));
        assert_eq!(redact("(02) 1234-5678", "#").0, "#");
        assert_eq!(redact("user@localhost", "#").0, "user@localhost");
    }
}
