//! `inboxd plugin test`: loads one plugin the way the daemon would and runs one hook on a
//! message file, reporting the verdict (or failure) and the timings. No broker involved.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Map, Value};

use super::PluginConfig;
use super::engine::Runtime;
use super::instance::WasmPlugin;
use crate::chat21::{Message, normalise};
use crate::policy::{Decision, Failure, Hook, Link, Subject};

/// What one trial found.
#[derive(Debug)]
pub struct Trial {
    pub plugin: String,
    pub digest: String,
    pub hook: &'static str,
    pub inbox_of: Option<String>,
    /// Compile + link + instantiate + init.
    pub load: Duration,
    pub first_call: Duration,
    pub answer: Result<Decision, Failure>,
    /// For a `modify`: the body after the host re-applied the protected fields.
    pub modified: Option<Result<Map<String, Value>, String>>,
    /// Average of the warm calls after the first (if any were made and none failed).
    pub warm_call: Option<(Duration, u32)>,
}

/// Runs `hook` of the plugin `spec` on `body` (a chat21 message); `repeat` warm calls are timed.
///
/// # Errors
/// When the message is not a JSON object, or the plugin does not load.
pub fn run(spec: &PluginConfig, body: Value, deliver_to: Option<&str>, repeat: u32) -> anyhow::Result<Trial> {
    let Value::Object(body) = body else { bail!("the message file must hold a JSON object") };
    let message = message(body);
    let started = Instant::now();
    let runtime = Runtime::new(None, spec.fuel.is_some())?;
    let plugin = WasmPlugin::load(&runtime, spec, 1).context("loading the plugin")?;
    let load = started.elapsed();
    let inbox_of = deliver_to.map(|inbox| if inbox.is_empty() { message.recipient.clone() } else { inbox.to_owned() });
    let hook = match &inbox_of {
        Some(inbox_of) => Hook::Deliver { inbox_of },
        None => Hook::Message,
    };
    let json = serde_json::to_string(&message.body)?;
    let subject = Subject { message: &message, json: &json };
    let started = Instant::now();
    let answer = plugin.call(hook, subject);
    let first_call = started.elapsed();
    let modified = match &answer {
        Ok(Decision::Modify(text)) => Some(protected(&message, text)),
        _ => None,
    };
    let warm_call = (answer.is_ok() && repeat > 0)
        .then(|| {
            let started = Instant::now();
            for _ in 0..repeat {
                plugin.call(hook, subject).ok()?;
            }
            Some((started.elapsed() / repeat, repeat))
        })
        .flatten();
    Ok(Trial {
        plugin: spec.name.clone(),
        digest: plugin.digest().to_owned(),
        hook: hook.as_str(),
        inbox_of,
        load,
        first_call,
        answer,
        modified,
        warm_call,
    })
}

/// The message as the daemon would have normalised it; identity fields default to a test chat.
fn message(body: Map<String, Value>) -> Message {
    let field = |name: &str, default: &str| body.get(name).and_then(Value::as_str).unwrap_or(default).to_owned();
    let (app, sender, recipient) = (field("app_id", "tilechat"), field("sender", "alice"), field("recipient", "bob"));
    let now = crate::clock::now_ms();
    normalise(&app, &sender, &recipient, body, uuid::Uuid::new_v4().to_string(), now)
}

fn protected(message: &Message, text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(body)) => {
            let mut rewritten = Message { body, ..message.clone() };
            rewritten.protect();
            Ok(rewritten.body)
        }
        Ok(_) => Err("not a JSON object: the host would apply the failure mode".into()),
        Err(err) => Err(format!("invalid JSON ({err}): the host would apply the failure mode")),
    }
}

impl fmt::Display for Trial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "plugin: {} (sha256 {}…)", self.plugin, self.digest)?;
        writeln!(f, "load: {:.1} ms (compile, link, instantiate, init)", self.load.as_secs_f64() * 1e3)?;
        match &self.inbox_of {
            Some(inbox) => writeln!(f, "hook: {} (inbox of {inbox})", self.hook)?,
            None => writeln!(f, "hook: {}", self.hook)?,
        }
        match &self.answer {
            Ok(Decision::Accept) => writeln!(f, "verdict: accept")?,
            Ok(Decision::Modify(_)) => match &self.modified {
                Some(Ok(body)) => writeln!(f, "verdict: modify\nbody: {}", Value::Object(body.clone()))?,
                Some(Err(problem)) => writeln!(f, "verdict: modify, refused: {problem}")?,
                None => writeln!(f, "verdict: modify")?,
            },
            Ok(Decision::Reject { code, reason, notify_sender }) => {
                writeln!(f, "verdict: reject\ncode: {code}\nreason: {reason}\nnotify-sender: {notify_sender}")?;
            }
            Ok(Decision::Drop) => writeln!(f, "verdict: drop")?,
            Ok(Decision::Hold(reason)) => writeln!(f, "verdict: hold\nreason: {reason}")?,
            Err(failure) => writeln!(f, "FAILED ({}): {}", failure.kind, failure.detail)?,
        }
        write!(f, "first call: {:.1} µs", self.first_call.as_secs_f64() * 1e6)?;
        if let Some((average, calls)) = self.warm_call {
            write!(f, "\nwarm call: {:.2} µs (average of {calls})", average.as_secs_f64() * 1e6)?;
        }
        Ok(())
    }
}
