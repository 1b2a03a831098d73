//! Routing: an inbound event becomes the exact set of inbox copies to publish, with the
//! policy consulted once per message and once per copy. Pure: no I/O, no clock, no id minted
//! here (see [`Stamp`]), nothing changed but the result; unit-tested.

use std::sync::Arc;

use serde_json::Value;

use super::{ConversationLookup, GroupLookup, GroupsUnavailable, RoutingConfig, UnknownGroups};
use crate::chat21::{
    self, EventKind, Group, GroupUpdate, HeldMessage, Inbound, InboxCopy, InputError, Message, Payload, Topic,
};
use crate::policy::{Policy, PolicyHandle, Verdict};

/// What routing decided for one delivery.
#[derive(Debug)]
pub struct Routed {
    /// What the delivery was, as the store and webhooks take it.
    pub event: Event,
    /// Publish all of these, then ack.
    pub copies: Vec<InboxCopy>,
    /// Park this in the held queue (then ack); set only when a policy held the message.
    pub held: Option<HeldMessage>,
    pub outcome: Outcome,
}

impl Routed {
    /// The id inboxd gave the message (chat messages only).
    pub fn message_id(&self) -> Option<&str> {
        match &self.event {
            Event::Message { message_id } => Some(message_id),
            _ => None,
        }
    }
}

/// The event a delivery carried, with what the store and webhooks need of it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A chat message, sent or released; its copies carry their conversation and status.
    Message { message_id: String },
    /// A read receipt of `message_id`; its copy (none unless RECEIVED) goes to the sender's
    /// inbox, its conversation the reader.
    Receipt { message_id: String },
    /// `me` changed their flags on `conversation` (each `None` when the patch does not set it).
    ConversationUpdate { me: String, conversation: String, is_new: Option<bool>, archived: Option<bool> },
    /// `me` archived `conversation`.
    Archive { me: String, conversation: String },
    /// A user's client came online or went offline (`{"connected":true}` / `{"disconnected":true}`).
    Presence { user: String, online: bool },
    /// The server side announced a group: store it, and tell the group directory.
    GroupUpdate(Group),
}

impl Event {
    /// Its kind, a bounded label.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Message { .. } => EventKind::Message,
            Event::Receipt { .. } => EventKind::ReadReceipt,
            Event::ConversationUpdate { .. } => EventKind::ConversationUpdate,
            Event::Archive { .. } => EventKind::ConversationArchive,
            Event::Presence { .. } => EventKind::Presence,
            Event::GroupUpdate(_) => EventKind::GroupUpdate,
        }
    }
}

/// What routing needs from outside to route one delivery: the id a new message gets, and the
/// time it is received (ms since the Unix epoch). The caller mints them; routing uses them
/// only for a chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub message_id: String,
    pub now_ms: i64,
}

/// The result of routing, for logs and metrics.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// A policy rejected it (the sender may still get a FAILED copy).
    Rejected {
        plugin: String,
        code: String,
    },
    /// A policy dropped it.
    Dropped,
    /// A policy held it for a moderator.
    Held {
        plugin: String,
    },
    /// A plugin could not run for want of CPU, or the store could not be read for a group
    /// ([`DIRECTORY`]) or an archive's conversation ([`CONVERSATIONS`]): nothing is published,
    /// the delivery is requeued.
    Deferred {
        plugin: String,
    },
    /// A valid event that needs no publish (presence, a read receipt other than RECEIVED).
    Ignored,
}

impl Outcome {
    /// Stable lower-case name, a bounded metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Dropped => "dropped",
            Outcome::Held { .. } => "held",
            Outcome::Deferred { .. } => "deferred",
            Outcome::Ignored => "ignored",
        }
    }

    /// Who decided it and with which code, for the logs (empty where nobody did).
    pub fn decided_by(&self) -> (&str, &str) {
        match self {
            Outcome::Rejected { plugin, code } => (plugin, code),
            Outcome::Held { plugin } | Outcome::Deferred { plugin } => (plugin, ""),
            Outcome::Delivered | Outcome::Dropped | Outcome::Ignored => ("", ""),
        }
    }
}

/// Applies the chat21 rules and the policy to inbound events of one app.
pub struct Router {
    app: String,
    policies: PolicyHandle,
    groups: Option<Arc<dyn GroupLookup>>,
    /// Where an archive finds the conversation it publishes; without one, an archive publishes
    /// nothing (there is no stored conversation).
    conversations: Option<Arc<dyn ConversationLookup>>,
    rules: RoutingConfig,
}

impl Router {
    /// A router with the default `[routing]` rules and no stored groups.
    pub fn new(app: &str, policies: PolicyHandle) -> Router {
        Router { app: app.to_owned(), policies, groups: None, conversations: None, rules: RoutingConfig::default() }
    }

    /// Routes by `rules` (trusted senders, inline members, unknown groups).
    #[must_use]
    pub fn with_rules(mut self, rules: RoutingConfig) -> Router {
        self.rules = rules;
        self
    }

    /// Routes group messages by the stored groups of `groups` too (members, and who may post).
    #[must_use]
    pub fn with_groups(mut self, groups: Arc<dyn GroupLookup>) -> Router {
        self.groups = Some(groups);
        self
    }

    /// Archives publish the conversations of `conversations`, as stored.
    #[must_use]
    pub fn with_conversations(mut self, conversations: Arc<dyn ConversationLookup>) -> Router {
        self.conversations = Some(conversations);
        self
    }

    /// The policy in force now; pass it to [`Router::route_with`] so that one message sees one chain.
    pub fn policy(&self) -> Arc<dyn Policy> {
        self.policies.current()
    }

    /// Routes one event with the policy in force now.
    ///
    /// # Errors
    /// An [`InputError`] when the body lacks what the event needs; the delivery is dead-lettered.
    pub fn route(&self, inbound: Inbound, stamp: Stamp) -> Result<Routed, InputError> {
        self.route_with(self.policy().as_ref(), inbound, stamp)
    }

    /// Routes one event with `policy` (a snapshot taken by the caller); a chat message gets the
    /// id and time of `stamp`.
    ///
    /// # Errors
    /// An [`InputError`] when the body lacks what the event needs; the delivery is dead-lettered.
    pub fn route_with(&self, policy: &dyn Policy, inbound: Inbound, stamp: Stamp) -> Result<Routed, InputError> {
        let app = self.app.as_str();
        let simple = |event: Event, copies: Vec<InboxCopy>| {
            let outcome = if copies.is_empty() { Outcome::Ignored } else { Outcome::Delivered };
            Ok(Routed { event, copies, held: None, outcome })
        };
        match inbound.topic {
            Topic::Outgoing { sender, recipient } => {
                let message = chat21::normalise(app, &sender, &recipient, inbound.body, stamp.message_id, stamp.now_ms);
                self.route_message(policy, message)
            }
            Topic::ReadReceipt { me, conversation, message_id } => {
                let copy = chat21::read_receipt_copy(app, &me, &conversation, &message_id, &inbound.body)?;
                simple(Event::Receipt { message_id }, copy.into_iter().collect())
            }
            Topic::ConversationUpdate { me, conversation } => {
                let flag = |key| inbound.body.get(key).and_then(Value::as_bool);
                let (is_new, archived) = (flag("is_new"), flag("archived"));
                let copy = chat21::conversation_update_copy(app, &me, &conversation, inbound.body)?;
                simple(Event::ConversationUpdate { me, conversation, is_new, archived }, vec![copy])
            }
            Topic::ConversationArchive { me, conversation } => {
                let stored = match self.conversations.as_deref().map(|c| c.get(&me, &conversation)).transpose() {
                    Ok(stored) => stored.flatten(),
                    // Not knowing is not "no conversation": the archive waits in the broker.
                    Err(_) => {
                        let event = Event::Archive { me, conversation };
                        let outcome = Outcome::Deferred { plugin: CONVERSATIONS.into() };
                        return Ok(Routed { event, copies: Vec::new(), held: None, outcome });
                    }
                };
                // chat21 publishes the stored conversation, and nothing when there is none.
                let copies = match stored {
                    Some(stored) => chat21::archive_copies(app, &me, &conversation, stored)?,
                    None => Vec::new(),
                };
                simple(Event::Archive { me, conversation }, copies)
            }
            Topic::Presence { me, .. } => {
                let online = inbound.body.get("connected").and_then(Value::as_bool) == Some(true);
                simple(Event::Presence { user: me, online }, Vec::new())
            }
            // chat21-http-server's history copy: delivered as is, no policy (its message passed
            // the chain when it was sent), webhooks as for any delivered copy, as chat21 does.
            Topic::Delivered { inbox, conversation } => {
                let (message_id, copy) = chat21::delivered_copy(app, &inbox, &conversation, inbound.body)?;
                simple(Event::Message { message_id }, vec![copy])
            }
            Topic::GroupUpdate => {
                let update = GroupUpdate::parse(app, &inbound.body, self.rules.max_inline_members)?;
                let copies = chat21::group_update_copies(app, &update)?;
                simple(Event::GroupUpdate(update.group), copies)
            }
        }
    }

    /// The chat21 app this router serves.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// Applies what `routed` announced to the group directory (a group update); the caller does
    /// it once routing is done, before it routes the next delivery.
    pub fn apply(&self, routed: &Routed) {
        if let (Event::GroupUpdate(group), Some(groups)) = (&routed.event, &self.groups) {
            groups.remember(group.clone());
        }
    }

    /// Routes a message a moderator released: as if every plugin had accepted it in
    /// `on_message`; `on_deliver` still applies per inbox (blocklists keep working).
    /// An [`Outcome::Deferred`] result publishes nothing: the entry must stay held.
    ///
    /// # Errors
    /// An [`InputError`] when a group message carries unusable inline members.
    pub fn release(&self, policy: &dyn Policy, mut message: Message) -> Result<Routed, InputError> {
        message.protect();
        self.fan_out(policy, message)
    }

    fn route_message(&self, policy: &dyn Policy, mut message: Message) -> Result<Routed, InputError> {
        match policy.on_message(&message) {
            Verdict::Accept => {}
            Verdict::Modify(body) => {
                message.body = body;
                message.protect();
            }
            Verdict::Reject(r) => {
                // The FAILED copy shows the chain's work: what a redactor took out stays out.
                if let Some(body) = r.body {
                    message.body = body;
                    message.protect();
                }
                let copies = if r.notify_sender {
                    vec![chat21::failed_copy(&message, &r.plugin, &r.code, &r.reason)?]
                } else {
                    Vec::new()
                };
                return Ok(message_routed(&message, copies, Outcome::Rejected { plugin: r.plugin, code: r.code }));
            }
            Verdict::Drop => return Ok(message_routed(&message, Vec::new(), Outcome::Dropped)),
            Verdict::Hold(h) => {
                if let Some(body) = h.body {
                    message.body = body;
                    message.protect();
                }
                let mut held = message_routed(&message, Vec::new(), Outcome::Held { plugin: h.plugin.clone() });
                held.held = Some(HeldMessage { message, plugin: h.plugin, reason: h.reason });
                return Ok(held);
            }
            Verdict::Defer(d) => {
                return Ok(message_routed(&message, Vec::new(), Outcome::Deferred { plugin: d.plugin }));
            }
        }
        self.fan_out(policy, message)
    }

    /// The inbox copies of an accepted message, each passed through `on_deliver`.
    ///
    /// A stored group's members are its stored ones, whatever the message lists inline; a
    /// sender who is not a member (nor trusted) gets only a FAILED copy. A group inboxd does
    /// not know reaches the inline members of a trusted sender (or of anyone, with transient
    /// unknown groups); otherwise the sender gets a FAILED copy. The inline list is never
    /// echoed in a copy.
    fn fan_out(&self, policy: &dyn Policy, mut message: Message) -> Result<Routed, InputError> {
        let copies = if message.is_group() {
            let listed = message.take_inline_members();
            let stored = match self.groups.as_deref().map(|g| g.get(&message.recipient)).transpose() {
                Ok(stored) => stored.flatten(),
                // Not knowing is not "no such group": the message waits in the broker for the store.
                Err(GroupsUnavailable) => {
                    return Ok(message_routed(&message, Vec::new(), Outcome::Deferred { plugin: DIRECTORY.into() }));
                }
            };
            let trusted = self.rules.is_trusted(&message.sender);
            match &stored {
                Some(stored) if trusted || stored.is_member(&message.sender) => {
                    chat21::group_copies(&message, stored.members.iter().map(String::as_str))?
                }
                Some(_) => return refused(&message, NOT_A_MEMBER),
                None if trusted || self.rules.unknown_groups == UnknownGroups::Transient => {
                    let members = match &listed {
                        Some(listed) => chat21::listed_members(
                            listed,
                            &self.app,
                            &message.recipient,
                            self.rules.max_inline_members,
                        )?,
                        None => Vec::new(),
                    };
                    chat21::group_copies(&message, members)?
                }
                None => return refused(&message, UNKNOWN_GROUP),
            }
        } else {
            chat21::direct_copies(&message)?
        };
        let verdicts = {
            let inboxes: Vec<&str> = copies.iter().map(|copy| copy.inbox_of.as_str()).collect();
            policy.on_deliver_each(&message, &inboxes)
        };
        // One copy that cannot be decided now defers them all: a redelivery publishes every copy again.
        if let Some(Verdict::Defer(d)) = verdicts.iter().find(|v| matches!(v, Verdict::Defer(_))) {
            return Ok(message_routed(&message, Vec::new(), Outcome::Deferred { plugin: d.plugin.clone() }));
        }
        let copies =
            copies.into_iter().zip(verdicts).filter_map(|(copy, verdict)| deliver(&message, copy, verdict)).collect();
        Ok(message_routed(&message, copies, Outcome::Delivered))
    }
}

fn message_routed(message: &Message, copies: Vec<InboxCopy>, outcome: Outcome) -> Routed {
    Routed { event: Event::Message { message_id: message.message_id.clone() }, copies, held: None, outcome }
}

/// What a deferral names when the group directory, not a plugin, could not answer.
pub const DIRECTORY: &str = "group-directory";
/// What a deferral names when the stored conversations could not be read for an archive.
pub const CONVERSATIONS: &str = "conversation-lists";

/// Who refuses a post into a stored group by a non-member, as the FAILED copy names it.
pub const NOT_A_MEMBER: (&str, &str, &str) = ("inboxd", "not-a-member", "you are not a member of this group");
/// Who refuses a message to a group inboxd has no record of (see [`UnknownGroups`]).
pub const UNKNOWN_GROUP: (&str, &str, &str) = ("inboxd", "unknown-group", "this group does not exist");

/// What a message inboxd itself refuses routes to: a FAILED copy to the sender, nothing else.
fn refused(message: &Message, (plugin, code, reason): (&str, &str, &str)) -> Result<Routed, InputError> {
    let copies = vec![chat21::failed_copy(message, plugin, code, reason)?];
    Ok(message_routed(message, copies, Outcome::Rejected { plugin: plugin.into(), code: code.into() }))
}

/// Applies the per-inbox verdict: keeps, rewrites (a body of its own) or removes one copy.
fn deliver(message: &Message, mut copy: InboxCopy, verdict: Verdict) -> Option<InboxCopy> {
    match verdict {
        Verdict::Accept => Some(copy),
        Verdict::Modify(body) => {
            let status = copy.body.get("status").cloned();
            let mut rewritten = Message { body, ..message.clone() };
            rewritten.protect();
            let mut body = rewritten.body;
            if let Some(status) = status {
                body.insert("status".into(), status);
            }
            copy.body = Payload::new(Value::Object(body));
            Some(copy)
        }
        Verdict::Reject(_) | Verdict::Drop | Verdict::Hold(_) | Verdict::Defer(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::chat21::{Limits, Status};
    use crate::policy::{AcceptAll, Deferred, Held, Rejection};

    /// A scripted policy: the message verdict, and inboxes whose copy is dropped.
    struct Fake {
        message: Verdict,
        blocked: &'static str,
    }

    impl Policy for Fake {
        fn on_message(&self, _m: &Message) -> Verdict {
            self.message.clone()
        }
        fn on_deliver(&self, _m: &Message, inbox_of: &str) -> Verdict {
            if inbox_of == self.blocked { Verdict::Drop } else { Verdict::Accept }
        }
    }

    const LIMITS: Limits = Limits { max_body_bytes: 4096, max_inline_members: 10 };

    fn inbound(key: &str, body: &Value) -> Inbound {
        Inbound::parse("app", key, body.to_string().as_bytes(), LIMITS).unwrap()
    }

    /// The stamp of every message routed here.
    fn stamp() -> Stamp {
        Stamp { message_id: "m-1".into(), now_ms: 1_700_000_000_000 }
    }

    fn plan(policy: impl Policy + 'static, key: &str, body: Value) -> Routed {
        Router::new("app", PolicyHandle::new(Arc::new(policy))).route(inbound(key, &body), stamp()).unwrap()
    }

    const DM: &str = "apps.app.outgoing.users.alice.messages.bob.outgoing";

    fn inboxes(plan: &Routed) -> Vec<&str> {
        plan.copies.iter().map(|c| c.inbox_of.as_str()).collect()
    }

    #[test]
    fn accepted_direct_message_reaches_both_sides_with_one_id() {
        let p = plan(AcceptAll, DM, json!({"text":"hi","sender":"mallory"}));
        assert_eq!(inboxes(&p), vec!["alice", "bob"]);
        assert_eq!(p.message_id(), Some("m-1"));
        assert!(p.copies.iter().all(|c| c.body["message_id"] == "m-1" && c.body["sender"] == "alice"));
        assert!(p.copies.iter().all(|c| c.body["timestamp"] == 1_700_000_000_000_i64));
        let sides: Vec<_> = p.copies.iter().map(|c| (c.conversation.as_str(), c.status)).collect();
        assert_eq!(sides, vec![("bob", Some(Status::Sent)), ("alice", Some(Status::Delivered))]);
    }

    #[test]
    fn modify_feeds_fan_out_but_cannot_spoof() {
        let body = json!({"text":"changed","sender":"mallory"}).as_object().unwrap().clone();
        let p = plan(Fake { message: Verdict::Modify(body), blocked: "" }, DM, json!({"text":"hi"}));
        assert_eq!(p.copies[1].body["text"], "changed");
        assert_eq!(p.copies[1].body["sender"], "alice");
        assert_eq!(p.copies[1].body["status"], 150);
    }

    #[test]
    fn reject_notifies_only_the_sender_and_drop_nobody() {
        let r = Rejection { plugin: "p".into(), code: "c".into(), reason: "r".into(), notify_sender: true, body: None };
        let p = plan(Fake { message: Verdict::Reject(r.clone()), blocked: "" }, DM, json!({}));
        assert_eq!(inboxes(&p), vec!["alice"]);
        assert_eq!(p.copies[0].body["status"], -100);
        assert_eq!(p.outcome, Outcome::Rejected { plugin: "p".into(), code: "c".into() });
        let silent = Rejection { notify_sender: false, ..r };
        assert!(plan(Fake { message: Verdict::Reject(silent), blocked: "" }, DM, json!({})).copies.is_empty());
        let p = plan(Fake { message: Verdict::Drop, blocked: "" }, DM, json!({}));
        assert!(p.copies.is_empty());
        assert_eq!(p.outcome, Outcome::Dropped);
    }

    #[test]
    fn hold_parks_the_normalised_message_and_publishes_nothing() {
        let h = Held { plugin: "mod".into(), reason: "check".into(), body: None };
        let p = plan(Fake { message: Verdict::Hold(h), blocked: "" }, DM, json!({"text":"hi","sender":"x"}));
        assert!(p.copies.is_empty());
        assert_eq!(p.outcome, Outcome::Held { plugin: "mod".into() });
        let held = p.held.clone().unwrap();
        assert_eq!((held.plugin.as_str(), held.reason.as_str()), ("mod", "check"));
        assert_eq!(held.message.body["sender"], "alice");
        assert_eq!(Some(held.message.message_id.as_str()), p.message_id());
    }

    #[test]
    fn release_skips_on_message_but_not_on_deliver() {
        let h = Held { plugin: "mod".into(), reason: "check".into(), body: None };
        let router = Router::new("app", PolicyHandle::new(Arc::new(AcceptAll)));
        let body = json!({"text":"hi"}).as_object().unwrap().clone();
        let message = chat21::normalise("app", "alice", "bob", body, "m1".into(), 1);
        let still_holding = Fake { message: Verdict::Hold(h), blocked: "bob" };
        let p = router.release(&still_holding, message).unwrap();
        assert_eq!(inboxes(&p), vec!["alice"]);
        assert_eq!(p.outcome, Outcome::Delivered);
    }

    #[test]
    fn one_message_uses_one_policy_snapshot() {
        let handle = PolicyHandle::new(Arc::new(AcceptAll));
        let router = Router::new("app", handle.clone());
        let snapshot = router.policy();
        handle.replace(Arc::new(Fake { message: Verdict::Drop, blocked: "" }));
        let inbound = inbound(DM, &json!({}));
        assert_eq!(router.route_with(snapshot.as_ref(), inbound.clone(), stamp()).unwrap().outcome, Outcome::Delivered);
        assert_eq!(router.route(inbound, stamp()).unwrap().outcome, Outcome::Dropped);
    }

    #[test]
    fn on_deliver_affects_one_inbox() {
        let key = "apps.app.outgoing.users.system.messages.group-1.outgoing";
        let p = plan(
            Fake { message: Verdict::Accept, blocked: "bob" },
            key,
            json!({"group":{"members":{"bob":1,"carol":1}}}),
        );
        assert_eq!(inboxes(&p), vec!["group-1", "carol", "system"]);
    }

    /// A directory of one stored group `g1` with members alice and bob.
    struct OneGroup;

    impl GroupLookup for OneGroup {
        fn get(&self, id: &str) -> Result<Option<Arc<Group>>, GroupsUnavailable> {
            let members = vec!["alice".to_owned(), "bob".to_owned()];
            if id == "down" {
                return Err(GroupsUnavailable);
            }
            Ok((id == "g1")
                .then(|| Arc::new(Group { id: id.into(), name: None, owner: None, members, body: json!({"uid": id}) })))
        }
        fn remember(&self, _group: Group) {}
    }

    fn post(router: &Router, sender: &str, group: &str, body: Value) -> Routed {
        let key = format!("apps.app.outgoing.users.{sender}.messages.{group}.outgoing");
        router.route(inbound(&key, &body), stamp()).unwrap()
    }

    fn router(rules: RoutingConfig) -> Router {
        Router::new("app", PolicyHandle::new(Arc::new(AcceptAll))).with_groups(Arc::new(OneGroup)).with_rules(rules)
    }

    #[test]
    fn stored_groups_give_members_and_refuse_outsiders() {
        let router = router(RoutingConfig::default());
        let group = json!({"channel_type":"group","text":"hi"});
        assert_eq!(inboxes(&post(&router, "bob", "g1", group.clone())), vec!["g1", "alice", "bob"]);
        let refused = post(&router, "mallory", "g1", group);
        assert_eq!(inboxes(&refused), vec!["mallory"]);
        assert_eq!(refused.copies[0].body["status"], -100);
        assert_eq!(refused.copies[0].body["attributes"]["rejection"]["code"], "not-a-member");
    }

    #[test]
    fn a_directory_that_cannot_answer_defers_the_message() {
        let router = router(RoutingConfig::default());
        let p = post(&router, "alice", "down", json!({"channel_type":"group","text":"hi"}));
        assert!(p.copies.is_empty(), "{:?}", inboxes(&p));
        assert_eq!(p.outcome, Outcome::Deferred { plugin: DIRECTORY.into() });
    }

    #[test]
    fn inline_members_never_override_a_stored_group() {
        let router = router(RoutingConfig::default());
        let body = json!({"channel_type":"group","group":{"members":{"bob":1,"carol":1,"mallory":1}}});
        for sender in ["alice", "system"] {
            let p = post(&router, sender, "g1", body.clone());
            assert!(!inboxes(&p).contains(&"carol") && !inboxes(&p).contains(&"mallory"), "{sender}: {p:?}");
            assert!(inboxes(&p).contains(&"bob"));
            assert!(p.copies.iter().all(|c| c.body["group"].get("members").is_none()), "members echoed");
        }
    }

    #[test]
    fn trusted_senders_post_into_stored_groups_they_are_not_members_of() {
        let p = post(&router(RoutingConfig::default()), "system", "g1", json!({"channel_type":"group"}));
        assert_eq!(inboxes(&p), vec!["g1", "alice", "bob", "system"]);
        assert_eq!(p.outcome, Outcome::Delivered);
    }

    #[test]
    fn unknown_groups_are_refused_unless_the_sender_is_trusted() {
        let body = json!({"channel_type":"group","text":"hi","group":{"name":"X","members":{"bob":1,"carol":1}}});
        let refused = post(&router(RoutingConfig::default()), "alice", "g2", body.clone());
        assert_eq!(inboxes(&refused), vec!["alice"]);
        assert_eq!(refused.copies[0].body["status"], -100);
        assert_eq!(refused.copies[0].body["attributes"]["rejection"]["code"], "unknown-group");
        assert_eq!(refused.outcome, Outcome::Rejected { plugin: "inboxd".into(), code: "unknown-group".into() });

        let trusted = post(&router(RoutingConfig::default()), "system", "g2", body.clone());
        assert_eq!(inboxes(&trusted), vec!["g2", "bob", "carol", "system"]);
        assert!(trusted.copies.iter().all(|c| c.body["group"] == json!({"name":"X"})), "members echoed");
        assert!(trusted.copies[1].body.shares(&trusted.copies[3].body));

        let transient = RoutingConfig { unknown_groups: UnknownGroups::Transient, ..RoutingConfig::default() };
        let old = post(&router(transient), "alice", "g2", body);
        assert_eq!(inboxes(&old), vec!["g2", "bob", "carol", "alice"]);
    }

    #[test]
    fn inline_members_a_policy_adds_are_checked_too() {
        let members: serde_json::Map<String, Value> = (0..11).map(|i| (format!("u{i}"), json!(1))).collect();
        let body = json!({"channel_type":"group","group":{"members":members}}).as_object().unwrap().clone();
        let policy = Fake { message: Verdict::Modify(body), blocked: "" };
        let router = Router::new("app", PolicyHandle::new(Arc::new(policy)))
            .with_rules(RoutingConfig { max_inline_members: 10, ..RoutingConfig::default() });
        let key = "apps.app.outgoing.users.system.messages.g2.outgoing";
        let err = router.route(inbound(key, &json!({"channel_type":"group"})), stamp()).unwrap_err();
        assert_eq!(err.code(), "too-many-members");
    }

    #[test]
    fn presence_and_other_receipts_publish_nothing() {
        let p = plan(AcceptAll, "apps.app.users.bob.presence.c1", json!({"connected":true}));
        assert_eq!(p.event, Event::Presence { user: "bob".into(), online: true });
        assert_eq!((p.event.kind(), p.outcome), (EventKind::Presence, Outcome::Ignored));
        let p = plan(AcceptAll, "apps.app.users.bob.messages.alice.m1.update", json!({"status":300}));
        assert_eq!(p.outcome, Outcome::Ignored);
    }

    /// What a redactor earlier in the chain made of the body (with a spoofing attempt).
    fn redacted() -> Option<serde_json::Map<String, Value>> {
        json!({"text":"call me at ***","sender":"mallory"}).as_object().cloned()
    }

    #[test]
    fn hold_parks_the_body_as_the_chain_modified_it() {
        let h = Held { plugin: "mod".into(), reason: "check".into(), body: redacted() };
        let p = plan(Fake { message: Verdict::Hold(h), blocked: "" }, DM, json!({"text":"call me at 555-1234"}));
        let held = p.held.clone().unwrap();
        assert_eq!(held.message.body["text"], "call me at ***");
        assert_eq!((held.message.body["sender"].as_str(), held.message.sender.as_str()), (Some("alice"), "alice"));
        assert_eq!(held.message.body["message_id"].as_str(), p.message_id());
    }

    #[test]
    fn the_failed_copy_of_a_rejection_shows_the_body_as_the_chain_modified_it() {
        let r = Rejection {
            plugin: "p".into(),
            code: "c".into(),
            reason: "r".into(),
            notify_sender: true,
            body: redacted(),
        };
        let p = plan(Fake { message: Verdict::Reject(r), blocked: "" }, DM, json!({"text":"call me at 555-1234"}));
        assert_eq!(inboxes(&p), vec!["alice"]);
        assert_eq!(
            (p.copies[0].body["text"].as_str(), p.copies[0].body["status"].as_i64()),
            (Some("call me at ***"), Some(-100))
        );
        assert_eq!(p.copies[0].body["sender"], "alice");
    }

    #[test]
    fn a_deferred_message_publishes_nothing() {
        let d = Deferred { plugin: "slow".into() };
        let p = plan(Fake { message: Verdict::Defer(d), blocked: "" }, DM, json!({"text":"hi"}));
        assert!(p.copies.is_empty() && p.held.is_none());
        assert_eq!(p.outcome, Outcome::Deferred { plugin: "slow".into() });

        /// Defers only bob's copy.
        struct DeferBob;
        impl Policy for DeferBob {
            fn on_message(&self, _m: &Message) -> Verdict {
                Verdict::Accept
            }
            fn on_deliver(&self, _m: &Message, inbox_of: &str) -> Verdict {
                if inbox_of == "bob" { Verdict::Defer(Deferred { plugin: "slow".into() }) } else { Verdict::Accept }
            }
        }
        let p = plan(DeferBob, DM, json!({"text":"hi"}));
        assert!(p.copies.is_empty(), "alice's copy waits with bob's: {:?}", inboxes(&p));
        assert_eq!(p.outcome, Outcome::Deferred { plugin: "slow".into() });
    }

    /// Bob's stored conversation with alice; carol's lists cannot be read.
    struct Lists;

    impl ConversationLookup for Lists {
        fn get(
            &self,
            user: &str,
            conversation: &str,
        ) -> Result<Option<serde_json::Map<String, Value>>, super::super::ConversationsUnavailable> {
            match (user, conversation) {
                ("carol", _) => Err(super::super::ConversationsUnavailable),
                ("bob", "alice") => Ok(json!({"text":"hi","sender":"alice","is_new":true}).as_object().cloned()),
                _ => Ok(None),
            }
        }
    }

    #[test]
    fn an_archive_publishes_the_stored_conversation_or_nothing() {
        let router = Router::new("app", PolicyHandle::new(Arc::new(AcceptAll))).with_conversations(Arc::new(Lists));
        let archive = |user: &str, conversation: &str| {
            let key = format!("apps.app.users.{user}.conversations.{conversation}.archive");
            router.route(inbound(&key, &json!({"action":"archive"})), stamp()).unwrap()
        };
        let stored = archive("bob", "alice");
        assert_eq!(stored.copies.len(), 2);
        assert!(
            stored
                .copies
                .iter()
                .all(|c| *c.body == json!({"text":"hi","sender":"alice","is_new":true,"archived":true}))
        );
        let none = archive("bob", "dave");
        assert!(none.copies.is_empty());
        assert_eq!(
            (none.event, none.outcome),
            (Event::Archive { me: "bob".into(), conversation: "dave".into() }, Outcome::Ignored)
        );
        let unknown = archive("carol", "alice");
        assert!(unknown.copies.is_empty());
        assert_eq!(unknown.outcome, Outcome::Deferred { plugin: CONVERSATIONS.into() });
    }

    #[test]
    fn each_event_is_typed_and_routing_changes_nothing() {
        /// Remembers nothing, but says whether it was asked to.
        struct Watching(std::sync::Mutex<Vec<String>>);
        impl GroupLookup for Watching {
            fn get(&self, _id: &str) -> Result<Option<Arc<Group>>, GroupsUnavailable> {
                Ok(None)
            }
            fn remember(&self, group: Group) {
                self.0.lock().unwrap().push(group.id);
            }
        }
        let directory = Arc::new(Watching(std::sync::Mutex::default()));
        let router = Router::new("app", PolicyHandle::new(Arc::new(AcceptAll))).with_groups(directory.clone());
        let route = |key: &str, body: Value| router.route(inbound(key, &body), stamp()).unwrap();
        let update = route("apps.app.users.bob.conversations.alice.update", json!({"is_new":false}));
        let flags = Event::ConversationUpdate {
            me: "bob".into(),
            conversation: "alice".into(),
            is_new: Some(false),
            archived: None,
        };
        assert_eq!(update.event, flags);
        let archive = route("apps.app.users.bob.conversations.alice.archive", json!({}));
        assert_eq!(archive.event, Event::Archive { me: "bob".into(), conversation: "alice".into() });
        assert!(archive.copies.iter().all(|c| c.conversation == "alice" && c.status.is_none()));
        let receipt = route("apps.app.users.bob.messages.alice.m1.update", json!({"status":200}));
        assert_eq!(receipt.event, Event::Receipt { message_id: "m1".into() });
        let copy = &receipt.copies[0];
        assert_eq!(
            (copy.inbox_of.as_str(), copy.conversation.as_str(), copy.status),
            ("alice", "bob", Some(Status::ReturnReceipt))
        );
        let body = json!({"group":{"uid":"g1","members":{"alice":1}},"notify_to":{"alice":1}});
        let group = route("apps.observer.app.groups.update", body);
        let Event::GroupUpdate(announced) = &group.event else { panic!("{group:?}") };
        assert_eq!((announced.id.as_str(), announced.members.as_slice()), ("g1", ["alice".to_owned()].as_slice()));
        assert!(directory.0.lock().unwrap().is_empty(), "routing told the directory");
        router.apply(&group);
        assert_eq!(*directory.0.lock().unwrap(), ["g1"]);
    }
}
