//! The plugin chain: plugins run in order, `modify` feeds the next one, the first reject,
//! drop or hold ends it (keeping the body as modified so far), and a failing plugin is skipped
//! or rejects by its failure mode, unless it failed only for want of CPU (then it defers).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value};

use super::link::{Decision, Failure, FailureKind, FailureMode, Hook, Link, Subject};
use super::{Deferred, Held, Policy, Rejection, Verdict};
use crate::chat21::Message;
use crate::telemetry::{self, PluginCounters};

/// The rejection code of a fail-closed plugin that trapped, timed out or answered nonsense.
pub const PLUGIN_FAILED: &str = "plugin-failed";

/// An ordered list of plugins; the empty chain accepts everything at no cost.
#[derive(Default)]
pub struct PolicyChain {
    links: Vec<Stage>,
}

/// One plugin of the chain, with its call counters.
struct Stage {
    link: Arc<dyn Link>,
    counters: PluginCounters,
}

/// What one plugin's answer means for the rest of the chain.
enum Step {
    Continue,
    Replace(Map<String, Value>),
    End(Verdict),
}

impl PolicyChain {
    pub fn new(links: Vec<Arc<dyn Link>>) -> PolicyChain {
        let links = links.into_iter().map(|link| Stage { counters: PluginCounters::new(link.name()), link }).collect();
        PolicyChain { links }
    }

    /// How many plugins the chain has.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether any plugin is called for `hook` (if not, there is nothing to serialise).
    fn calls(&self, hook: Hook<'_>) -> bool {
        self.links.iter().any(|stage| stage.link.hooks().includes(hook))
    }

    /// Whether the chain has no plugin (and so accepts everything).
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Runs the chain for one hook on `message`, whose body serialises to `json`;
    /// `on_deliver` turns a hold into a drop of that copy. A reject or hold carries the body
    /// as the plugins before it left it.
    fn run(&self, hook: Hook<'_>, message: &Message, json: &str) -> Verdict {
        if self.links.is_empty() {
            return Verdict::Accept;
        }
        let mut current = Cow::Borrowed(message);
        let mut json = Cow::Borrowed(json);
        let mut modified = false;
        for stage in self.links.iter().filter(|stage| stage.link.hooks().includes(hook)) {
            let subject = Subject { message: &current, json: &json };
            match ask(stage, hook, subject) {
                Step::Continue => {}
                Step::Replace(body) => {
                    let mut rewritten = current.into_owned();
                    rewritten.body = body;
                    rewritten.protect();
                    json = Cow::Owned(to_json(&rewritten.body));
                    current = Cow::Owned(rewritten);
                    modified = true;
                }
                Step::End(Verdict::Hold(_)) if matches!(hook, Hook::Deliver { .. }) => return Verdict::Drop,
                Step::End(verdict) if modified => return with_body(verdict, current.into_owned().body),
                Step::End(verdict) => return verdict,
            }
        }
        if modified { Verdict::Modify(current.into_owned().body) } else { Verdict::Accept }
    }
}

impl Policy for PolicyChain {
    fn on_message(&self, message: &Message) -> Verdict {
        if !self.calls(Hook::Message) {
            return Verdict::Accept;
        }
        self.run(Hook::Message, message, &to_json(&message.body))
    }

    fn on_deliver(&self, message: &Message, inbox_of: &str) -> Verdict {
        self.on_deliver_each(message, &[inbox_of]).pop().unwrap_or(Verdict::Accept)
    }

    fn on_deliver_each(&self, message: &Message, inboxes: &[&str]) -> Vec<Verdict> {
        if !self.calls(Hook::Deliver { inbox_of: "" }) {
            return vec![Verdict::Accept; inboxes.len()];
        }
        let json = to_json(&message.body);
        inboxes.iter().map(|inbox_of| self.run(Hook::Deliver { inbox_of }, message, &json)).collect()
    }

    fn is_noop(&self) -> bool {
        self.links.is_empty()
    }
}

/// `verdict` with the body the chain had made when it ended (for a reject or a hold).
fn with_body(verdict: Verdict, body: Map<String, Value>) -> Verdict {
    match verdict {
        Verdict::Reject(rejection) => Verdict::Reject(Rejection { body: Some(body), ..rejection }),
        Verdict::Hold(held) => Verdict::Hold(Held { body: Some(body), ..held }),
        other => other,
    }
}

/// Calls one plugin and interprets its answer; failures go through its failure mode.
fn ask(stage: &Stage, hook: Hook<'_>, subject: Subject<'_>) -> Step {
    let link = stage.link.as_ref();
    let started = Instant::now();
    let answer = link.call(hook, subject);
    let elapsed = started.elapsed();
    let decision = match answer {
        Ok(decision) => decision,
        Err(failure) => return failed(stage, hook, &failure),
    };
    let (name, digest) = (link.name(), link.digest());
    telemetry::plugin_called(&stage.counters, name, digest, hook.as_str(), decision.as_str(), elapsed);
    match decision {
        Decision::Accept => Step::Continue,
        Decision::Modify(text) => match parse_object(&text) {
            Ok(body) => Step::Replace(body),
            Err(detail) => failed(stage, hook, &Failure { kind: FailureKind::InvalidVerdict, detail }),
        },
        Decision::Reject { code, reason, notify_sender } => {
            let plugin = link.name().to_owned();
            Step::End(Verdict::Reject(Rejection { plugin, code, reason, notify_sender, body: None }))
        }
        Decision::Drop => Step::End(Verdict::Drop),
        Decision::Hold(reason) => Step::End(Verdict::Hold(Held { plugin: link.name().to_owned(), reason, body: None })),
    }
}

/// A failure goes through the plugin's failure mode, unless the plugin never got the CPU to
/// overrun anything (wall-clock ceiling): load is not a verdict, the message is deferred.
fn failed(stage: &Stage, hook: Hook<'_>, failure: &Failure) -> Step {
    let link = stage.link.as_ref();
    if failure.kind == FailureKind::Ceiling {
        telemetry::plugin_deferred(&stage.counters, link.name(), link.digest(), hook.as_str(), failure.labels());
        return Step::End(Verdict::Defer(Deferred { plugin: link.name().to_owned() }));
    }
    let mode = link.failure_mode();
    telemetry::plugin_failed(
        &stage.counters,
        link.name(),
        link.digest(),
        hook.as_str(),
        failure.labels(),
        mode.as_str(),
    );
    match mode {
        FailureMode::FailOpen => Step::Continue,
        FailureMode::FailClosed => Step::End(Verdict::Reject(Rejection {
            plugin: link.name().to_owned(),
            code: PLUGIN_FAILED.to_owned(),
            reason: "the message could not be checked by a policy plugin".to_owned(),
            notify_sender: true,
            body: None,
        })),
    }
}

/// A `modify` body: must be a JSON object.
fn parse_object(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(body)) => Ok(body),
        Ok(_) => Err("modify returned JSON that is not an object".to_owned()),
        Err(err) => Err(format!("modify returned invalid JSON: {err}")),
    }
}

fn to_json(body: &Map<String, Value>) -> String {
    serde_json::to_string(body).expect("serialising a JSON map cannot fail")
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::chat21::normalise;
    use crate::policy::Hooks;

    type Answer = Box<dyn Fn(Hook<'_>, Subject<'_>) -> Result<Decision, Failure> + Send + Sync>;

    /// A scripted plugin: answers from a closure and records what it was shown.
    struct Fake {
        name: &'static str,
        mode: FailureMode,
        answer: Answer,
        seen: Mutex<Vec<String>>,
    }

    impl Fake {
        fn new(
            name: &'static str,
            answer: impl Fn(Hook<'_>, Subject<'_>) -> Result<Decision, Failure> + Send + Sync + 'static,
        ) -> Arc<Fake> {
            Arc::new(Fake { name, mode: FailureMode::FailClosed, answer: Box::new(answer), seen: Mutex::default() })
        }

        fn open(
            name: &'static str,
            answer: impl Fn(Hook<'_>, Subject<'_>) -> Result<Decision, Failure> + Send + Sync + 'static,
        ) -> Arc<Fake> {
            Arc::new(Fake { name, mode: FailureMode::FailOpen, answer: Box::new(answer), seen: Mutex::default() })
        }

        fn seen(&self) -> Vec<String> {
            self.seen.lock().unwrap().clone()
        }
    }

    impl Link for Fake {
        fn name(&self) -> &str {
            self.name
        }
        fn digest(&self) -> &str {
            "fake"
        }
        fn failure_mode(&self) -> FailureMode {
            self.mode
        }
        fn call(&self, hook: Hook<'_>, subject: Subject<'_>) -> Result<Decision, Failure> {
            self.seen.lock().unwrap().push(subject.json.to_owned());
            (self.answer)(hook, subject)
        }
    }

    fn chain(links: Vec<Arc<Fake>>) -> PolicyChain {
        PolicyChain::new(links.into_iter().map(|l| l as Arc<dyn Link>).collect())
    }

    fn message() -> Message {
        normalise("app", "alice", "bob", json!({"text":"hi"}).as_object().unwrap().clone(), "m1".into(), 7)
    }

    fn trap() -> Failure {
        Failure { kind: FailureKind::Trap, detail: "boom".into() }
    }

    #[test]
    fn empty_chain_accepts_and_is_a_noop() {
        let c = PolicyChain::default();
        assert!(c.is_noop());
        assert_eq!(c.on_message(&message()), Verdict::Accept);
    }

    #[test]
    fn all_accept_is_accept() {
        let a = Fake::new("a", |_, _| Ok(Decision::Accept));
        let b = Fake::new("b", |_, _| Ok(Decision::Accept));
        assert_eq!(chain(vec![a.clone(), b.clone()]).on_message(&message()), Verdict::Accept);
        assert_eq!((a.seen().len(), b.seen().len()), (1, 1));
    }

    #[test]
    fn modify_feeds_the_next_plugin_with_protected_fields_restored() {
        let spoof = Fake::new("spoof", |_, _| Ok(Decision::Modify(r#"{"text":"HI","sender":"mallory"}"#.into())));
        let next = Fake::new("next", |_, _| Ok(Decision::Accept));
        let verdict = chain(vec![spoof, next.clone()]).on_message(&message());
        let seen: Value = serde_json::from_str(&next.seen()[0]).unwrap();
        assert_eq!((seen["text"].as_str(), seen["sender"].as_str()), (Some("HI"), Some("alice")));
        let Verdict::Modify(body) = verdict else { panic!("expected modify, got {verdict:?}") };
        assert_eq!(body["sender"], "alice");
        assert_eq!(body["message_id"], "m1");
        assert_eq!(body["text"], "HI");
    }

    #[test]
    fn first_reject_drop_or_hold_ends_the_chain() {
        let reject = |_: Hook<'_>, _: Subject<'_>| {
            Ok(Decision::Reject { code: "c".into(), reason: "r".into(), notify_sender: true })
        };
        for (first, expected) in [
            (
                Fake::new("x", reject),
                Verdict::Reject(Rejection {
                    plugin: "x".into(),
                    code: "c".into(),
                    reason: "r".into(),
                    notify_sender: true,
                    body: None,
                }),
            ),
            (Fake::new("x", |_, _| Ok(Decision::Drop)), Verdict::Drop),
            (
                Fake::new("x", |_, _| Ok(Decision::Hold("look".into()))),
                Verdict::Hold(Held { plugin: "x".into(), reason: "look".into(), body: None }),
            ),
        ] {
            let never = Fake::new("never", |_, _| Ok(Decision::Accept));
            assert_eq!(chain(vec![first, never.clone()]).on_message(&message()), expected);
            assert!(never.seen().is_empty());
        }
    }

    #[test]
    fn on_deliver_sees_the_inbox_and_hold_becomes_drop() {
        let blocker = Fake::new("b", |hook, _| match hook {
            Hook::Deliver { inbox_of: "bob" } => Ok(Decision::Hold("no".into())),
            _ => Ok(Decision::Accept),
        });
        let c = chain(vec![blocker]);
        assert_eq!(c.on_deliver(&message(), "bob"), Verdict::Drop);
        assert_eq!(c.on_deliver(&message(), "alice"), Verdict::Accept);
    }

    #[test]
    fn plugins_are_called_only_for_their_hooks() {
        struct OnlyDeliver(Arc<Fake>);
        impl Link for OnlyDeliver {
            fn name(&self) -> &str {
                self.0.name()
            }
            fn digest(&self) -> &str {
                "fake"
            }
            fn failure_mode(&self) -> FailureMode {
                FailureMode::FailClosed
            }
            fn hooks(&self) -> Hooks {
                Hooks { on_message: false, on_deliver: true }
            }
            fn call(&self, hook: Hook<'_>, subject: Subject<'_>) -> Result<Decision, Failure> {
                self.0.call(hook, subject)
            }
        }
        let dropper = Fake::new("d", |_, _| Ok(Decision::Drop));
        let c = PolicyChain::new(vec![Arc::new(OnlyDeliver(dropper.clone()))]);
        assert_eq!(c.on_message(&message()), Verdict::Accept);
        assert!(dropper.seen().is_empty());
        assert_eq!(c.on_deliver(&message(), "bob"), Verdict::Drop);
        assert_eq!(dropper.seen().len(), 1);
    }

    #[test]
    fn a_failure_is_not_a_rejection_unless_fail_closed() {
        let next = Fake::new("next", |_, _| Ok(Decision::Accept));
        let open = Fake::open("open", |_, _| Err(trap()));
        assert_eq!(chain(vec![open, next.clone()]).on_message(&message()), Verdict::Accept);
        assert_eq!(next.seen().len(), 1);
        let closed = Fake::new("closed", |_, _| Err(trap()));
        let Verdict::Reject(r) = chain(vec![closed, next.clone()]).on_message(&message()) else { panic!() };
        assert_eq!((r.plugin.as_str(), r.code.as_str(), r.notify_sender), ("closed", PLUGIN_FAILED, true));
        assert_eq!(next.seen().len(), 1);
    }

    #[test]
    fn invalid_modify_goes_through_the_failure_mode() {
        for bad in ["not json", "[1,2]", "\"text\""] {
            let open = Fake::open("open", move |_, _| Ok(Decision::Modify(bad.into())));
            assert_eq!(chain(vec![open]).on_message(&message()), Verdict::Accept);
            let closed = Fake::new("closed", move |_, _| Ok(Decision::Modify(bad.into())));
            let verdict = chain(vec![closed]).on_message(&message());
            assert!(matches!(verdict, Verdict::Reject(ref r) if r.code == PLUGIN_FAILED), "{bad}: {verdict:?}");
        }
    }

    #[test]
    fn hold_and_reject_carry_the_body_as_modified_so_far() {
        let redact = || Fake::new("redact", |_, _| Ok(Decision::Modify(r#"{"text":"***","sender":"mallory"}"#.into())));
        let holder = Fake::new("hold", |_, _| Ok(Decision::Hold("look".into())));
        let Verdict::Hold(held) = chain(vec![redact(), holder.clone()]).on_message(&message()) else { panic!() };
        let body = held.body.expect("the redacted body is parked");
        assert_eq!((body["text"].as_str(), body["sender"].as_str()), (Some("***"), Some("alice")));
        assert_eq!(serde_json::from_str::<Value>(&holder.seen()[0]).unwrap()["text"], "***");
        let rejecter = Fake::new("reject", |_, _| {
            Ok(Decision::Reject { code: "c".into(), reason: "r".into(), notify_sender: true })
        });
        let Verdict::Reject(r) = chain(vec![redact(), rejecter]).on_message(&message()) else { panic!() };
        assert_eq!(r.body.expect("the redacted body")["text"], "***");
        // Nothing modified: nothing to carry.
        let Verdict::Hold(held) = chain(vec![holder]).on_message(&message()) else { panic!() };
        assert_eq!(held.body, None);
    }

    #[test]
    fn a_failure_for_want_of_cpu_defers_whatever_the_failure_mode() {
        let starved = || Failure { kind: FailureKind::Ceiling, detail: "cut short by its wall-clock ceiling".into() };
        for first in [Fake::new("closed", move |_, _| Err(starved())), Fake::open("open", move |_, _| Err(starved()))] {
            let name = first.name;
            let never = Fake::new("never", |_, _| Ok(Decision::Accept));
            let verdict = chain(vec![first, never.clone()]).on_message(&message());
            assert_eq!(verdict, Verdict::Defer(Deferred { plugin: name.into() }));
            assert!(never.seen().is_empty());
        }
        let c = chain(vec![Fake::new("d", move |_, _| Err(starved()))]);
        assert!(matches!(c.on_deliver(&message(), "bob"), Verdict::Defer(_)));
        // A real overrun is the plugin's: its failure mode applies.
        let overran = Fake::new("slow", |_, _| Err(Failure { kind: FailureKind::Overran, detail: "cpu".into() }));
        assert!(
            matches!(chain(vec![overran]).on_message(&message()), Verdict::Reject(ref r) if r.code == PLUGIN_FAILED)
        );
    }
}
