//! Fuzzes one delivery through inboxd: routing key and body parsing, body normalisation and
//! routing (policy accepting all, two stored groups, a conversation for every archive), under both `unknown_groups` rules.
//! Input: the routing key, a newline, the body. A panic is a finding, and so is a published
//! key that AMQP would refuse or that reads back wrong (see `chat21::key::check_published`).
//! Run with scripts/fuzz.sh.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use inboxd::chat21::{Group, Inbound, Limits, key};
use inboxd::policy::{AcceptAll, PolicyHandle};
use inboxd::routing::{
    ConversationLookup, ConversationsUnavailable, GroupLookup, GroupsUnavailable, Router, RoutingConfig, Stamp,
    UnknownGroups,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const APP: &str = "app";
/// Small limits, so that the fuzzer reaches them.
const LIMITS: Limits = Limits { max_body_bytes: 64 * 1024, max_inline_members: 8 };

/// Stored groups `g1` (alice, bob) and `group-long` (a member whose key is exactly 255 bytes).
struct Groups(HashMap<String, Arc<Group>>);

impl GroupLookup for Groups {
    fn get(&self, id: &str) -> Result<Option<Arc<Group>>, GroupsUnavailable> {
        Ok(self.0.get(id).cloned())
    }
    fn remember(&self, _group: Group) {}
}

/// Every user has a conversation with everyone, so archives publish.
struct EveryConversation;

impl ConversationLookup for EveryConversation {
    fn get(&self, user: &str, with: &str) -> Result<Option<serde_json::Map<String, Value>>, ConversationsUnavailable> {
        Ok(json!({"timelineOf": user, "conversWith": with, "text": "x"}).as_object().cloned())
    }
}

fn groups() -> Groups {
    let group = |id: &str, members: Vec<String>| {
        let stored = Group { id: id.into(), name: None, owner: None, members, body: json!({"uid": id}) };
        (id.to_owned(), Arc::new(stored))
    };
    // apps.app.users.<member>.messages.group-long.clientadded = 47 bytes + the member
    let long_member = "m".repeat(key::MAX_ROUTING_KEY_BYTES - 47);
    Groups(HashMap::from([group("g1", vec!["alice".into(), "bob".into()]), group("group-long", vec![long_member])]))
}

static ROUTERS: LazyLock<[Router; 2]> = LazyLock::new(|| {
    let router = |unknown_groups| {
        let rules =
            RoutingConfig { unknown_groups, max_inline_members: LIMITS.max_inline_members, ..RoutingConfig::default() };
        Router::new(APP, PolicyHandle::new(Arc::new(AcceptAll)))
            .with_groups(Arc::new(groups()))
            .with_conversations(Arc::new(EveryConversation))
            .with_rules(rules)
    };
    [router(UnknownGroups::Refuse), router(UnknownGroups::Transient)]
});

fuzz_target!(|data: &[u8]| {
    let (key, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    // AMQP routing keys are text: lapin hands inboxd a `str`.
    let Ok(key) = std::str::from_utf8(key) else { return };
    let Ok(inbound) = Inbound::parse(APP, key, body, LIMITS) else { return };
    for router in ROUTERS.iter() {
        let stamp = Stamp { message_id: "0190b0c4-7a1e-7000-8000-000000000000".into(), now_ms: 1_700_000_000_000 };
        match router.route(inbound.clone(), stamp) {
            Ok(plan) => {
                for copy in &plan.copies {
                    if let Err(bad) = key::check_published(APP, &copy.inbox_of, &copy.routing_key) {
                        panic!("published key: {bad}");
                    }
                    assert!(inboxd::broker::short_string("key", &copy.routing_key).is_ok());
                    // The shared bytes are the copy's JSON serialised (comparing the JSON parsed
                    // back would trip on serde_json's float parsing, off by one ulp on long numbers).
                    assert_eq!(copy.body.bytes(), serde_json::to_vec(&*copy.body).unwrap());
                    assert!(serde_json::from_slice::<Value>(&copy.body.bytes()).is_ok_and(|v| v.is_object()));
                }
            }
            // Parsing bounds every id by the keys routing builds from it.
            Err(err) => assert_ne!(err.code(), "id-too-long", "{key:?} was accepted, then refused: {err}"),
        }
    }
});
