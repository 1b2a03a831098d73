//! Property test: for any inbound key and body that parsing accepts, every key routing
//! publishes to is a valid AMQP routing key (≤ 255 bytes, no `*`, `#` or empty words).

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::{GroupLookup, GroupsUnavailable, Router, RoutingConfig, Stamp, UnknownGroups};
use crate::chat21::{Group, Inbound, Limits, key};
use crate::policy::{AcceptAll, PolicyHandle};

const APP: &str = "app";
const LIMITS: Limits = Limits { max_body_bytes: 1 << 20, max_inline_members: 16 };

/// A stored group whose id and members are as long as they can be: its timeline key and its
/// members' keys are exactly 255 bytes (`apps.app.users.` + id + `.messages.` + id + `.clientadded`).
fn longest_group() -> String {
    "L".repeat((key::MAX_ROUTING_KEY_BYTES - 37) / 2)
}

/// Stored groups: `g1` (alice, bob) and the longest one (a member of the longest id).
struct Groups(HashMap<String, Arc<Group>>);

impl Groups {
    fn new() -> Groups {
        let group = |id: &str, members: Vec<String>| {
            let stored = Group { id: id.into(), name: None, owner: None, members, body: json!({"uid": id}) };
            (id.to_owned(), Arc::new(stored))
        };
        let long = longest_group();
        let member = "M".repeat(key::MAX_ROUTING_KEY_BYTES - 37 - long.len());
        Groups(HashMap::from([group("g1", vec!["alice".into(), "bob".into()]), group(&long, vec![member])]))
    }
}

impl GroupLookup for Groups {
    fn get(&self, id: &str) -> Result<Option<Arc<Group>>, GroupsUnavailable> {
        Ok(self.0.get(id).cloned())
    }
    fn remember(&self, _group: Group) {}
}

/// Ids: mostly routable, of any length up to past the limit, some with forbidden characters.
fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9_-]{1,8}",
        3 => "[a-zA-Z0-9_-]{1,260}",
        1 => "[a-z.#*+/ ]{0,4}",
        1 => prop_oneof![Just("system".to_owned()), Just("g1".to_owned()), Just(longest_group())],
    ]
}

/// An inbound key of any row of the protocol table, or something else.
fn routing_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (id(), id()).prop_map(|(s, r)| format!("apps.{APP}.outgoing.users.{s}.messages.{r}.outgoing")),
        1 => (id(), id(), id()).prop_map(|(me, c, m)| format!("apps.{APP}.users.{me}.messages.{c}.{m}.update")),
        1 => (id(), id()).prop_map(|(me, c)| format!("apps.{APP}.users.{me}.conversations.{c}.update")),
        1 => (id(), id()).prop_map(|(me, c)| format!("apps.{APP}.users.{me}.conversations.{c}.archive")),
        1 => (id(), id()).prop_map(|(me, c)| format!("apps.{APP}.users.{me}.presence.{c}")),
        1 => Just(format!("apps.observer.{APP}.groups.update")),
        1 => "[a-z.]{0,40}",
    ]
}

fn id_map() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::vec(id(), 0..20).prop_map(|ids| ids.into_iter().map(|id| (id, json!(1))).collect())
}

/// A body with the fields routing reads, each present or not.
fn body() -> impl Strategy<Value = Value> {
    let channel = prop_oneof![Just(json!("group")), Just(json!("direct")), Just(json!(7))];
    let timestamp = prop_oneof![any::<i64>().prop_map(Value::from), Just(json!("soon")), Just(json!(1e300))];
    let hidden = prop_oneof![id().prop_map(Value::from), proptest::collection::vec(id(), 0..4).prop_map(Value::from)];
    (
        proptest::option::of(channel),
        proptest::option::of(id_map()),
        proptest::option::of((id(), proptest::option::of(id_map()))),
        proptest::option::of(id_map()),
        proptest::option::of(prop_oneof![Just(200), any::<i64>()]),
        proptest::option::of(timestamp),
        proptest::option::of(hidden),
    )
        .prop_map(|(channel, members, group, notify_to, status, timestamp, hidden)| {
            let mut body = json!({"text": "hi"});
            let fields = [
                ("channel_type", channel),
                ("notify_to", notify_to.map(Value::Object)),
                ("status", status.map(Value::from)),
                ("timestamp", timestamp),
                ("attributes", hidden.map(|h| json!({"hiddenFor": h}))),
            ];
            for (name, value) in fields {
                if let Some(value) = value {
                    body[name] = value;
                }
            }
            match (members, group) {
                (_, Some((uid, members))) => body["group"] = json!({"uid": uid, "members": members}),
                (Some(members), None) => body["group"] = json!({"members": members}),
                (None, None) => {}
            }
            body
        })
}

/// Every user has a conversation with everyone, so archives publish.
struct EveryConversation;

impl crate::routing::ConversationLookup for EveryConversation {
    fn get(
        &self,
        user: &str,
        conversation: &str,
    ) -> Result<Option<Map<String, Value>>, crate::routing::ConversationsUnavailable> {
        Ok(json!({"timelineOf": user, "conversWith": conversation, "text": "x"}).as_object().cloned())
    }
}

fn routers() -> Vec<Router> {
    let transient = RoutingConfig { unknown_groups: UnknownGroups::Transient, ..RoutingConfig::default() };
    [RoutingConfig::default(), transient]
        .into_iter()
        .map(|rules| {
            Router::new(APP, PolicyHandle::new(Arc::new(AcceptAll)))
                .with_groups(Arc::new(Groups::new()))
                .with_conversations(Arc::new(EveryConversation))
                .with_rules(rules)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn every_published_key_is_a_valid_routing_key(key in routing_key(), body in body()) {
        let Ok(inbound) = Inbound::parse(APP, &key, body.to_string().as_bytes(), LIMITS) else { return Ok(()) };
        for router in routers() {
            let stamp = Stamp { message_id: "m-1".into(), now_ms: 1_700_000_000_000 };
            match router.route(inbound.clone(), stamp) {
                Ok(plan) => {
                    for copy in &plan.copies {
                        let checked = key::check_published(APP, &copy.inbox_of, &copy.routing_key);
                        prop_assert!(checked.is_ok(), "{}", checked.unwrap_err());
                    }
                }
                // Parsing bounds the ids by the same keys routing builds.
                Err(err) => prop_assert_ne!(err.code(), "id-too-long", "{} accepted, then {}", key, err),
            }
        }
    }
}
