//! The pure part of the group routes: chat21-http-server's group JSON, the `groups.update` body
//! the observer fans out, its `system` info messages (texts and `messagelabel`s exactly as
//! `chat21Api/index.js` writes them) and who may change a group.

use serde_json::{Map, Value, json};

use crate::chat21::key;
use crate::token::Caller;

/// The sender of chat21's info messages.
pub const SYSTEM: &str = "system";

/// A new group as `POST /groups` stores it: `{name, uid, appId, owner, members, createdOn,
/// updatedOn[, attributes]}`.
pub fn new_group(
    name: &Value,
    id: &str,
    app: &str,
    owner: &str,
    members: Map<String, Value>,
    attributes: Option<&Value>,
    now: i64,
) -> Value {
    let mut group = json!({
        "name": name, "uid": id, "appId": app, "owner": owner, "members": members,
        "createdOn": now, "updatedOn": now,
    });
    if let Some(attributes) = attributes {
        group["attributes"] = attributes.clone();
    }
    group
}

/// The ids of `group.members`.
pub fn members(group: &Value) -> Vec<String> {
    group.get("members").and_then(Value::as_object).map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

/// Whether `caller` may change `group`: its owner, or the app's admin (chat21's `im_owner ||
/// im_admin`).
pub fn may_manage(group: &Value, caller: &Caller) -> bool {
    caller.admin || group.get("owner").and_then(Value::as_str) == Some(caller.user.as_str())
}

/// The body of `apps.observer.<app>.groups.update`: the group (with `notification` when given)
/// and whom to tell (`notify_to`, `{uid: 1}`).
pub fn update(group: &Value, notify_to: &[String], notification: Option<Value>) -> Value {
    let mut group = group.clone();
    if let Some(label) = notification {
        group["notification"] = json!({"messagelabel": label});
    }
    let notify_to: Map<String, Value> = notify_to.iter().map(|m| (m.clone(), json!(1))).collect();
    json!({"group": group, "notify_to": notify_to})
}

/// The routing key of a group update.
pub fn update_key(app: &str) -> String {
    format!("apps.observer.{app}.groups.update")
}

/// The routing key `system` posts to `group` on.
pub fn system_key(app: &str, group: &str) -> String {
    format!("apps.{app}.outgoing.users.{SYSTEM}.messages.{group}.outgoing")
}

/// chat21's `MEMBER_JOINED_GROUP` label. Without a contacts lookup (chat21's
/// `CONTACTS_LOOKUP_ENDPOINT`) a member's full name is its id and the other names are empty,
/// as chat21's `getContact` falls back.
pub fn joined_label(member: &str) -> Value {
    json!({"key": "MEMBER_JOINED_GROUP", "parameters": {
        "member_id": member, "fullname": member, "firstname": "", "lastname": "",
    }})
}

/// chat21's `MEMBER_LEFT_GROUP` label.
pub fn left_label(member: &str) -> Value {
    json!({"key": "MEMBER_LEFT_GROUP", "parameters": {"member_id": member}})
}

/// chat21's `DATA_UPDATED_GROUP` label (a rename).
pub fn renamed_label(name: &Value) -> Value {
    json!({"key": "DATA_UPDATED_GROUP", "parameters": {"group_name": name}})
}

/// chat21's `ATTRIBUTES_UPDATED_GROUP` label.
pub fn attributes_label(attributes: &Value) -> Value {
    json!({"key": "ATTRIBUTES_UPDATED_GROUP", "parameters": {"attributes": attributes}})
}

/// An info message from `system` to `group` (`attributes.subtype = "info"`), as chat21 sends
/// them. It lists the members inline too: a process whose directory does not hold the group
/// yet (it was just created) still reaches them; a stored group's own members always win.
pub fn info(group: &Value, text: &str, label: Value, now: i64) -> Value {
    json!({
        "type": "text",
        "text": text,
        "timestamp": now,
        "channel_type": "group",
        "sender_fullname": "System",
        "sender": SYSTEM,
        "recipient_fullname": group.get("name").cloned().unwrap_or(Value::Null),
        "recipient": group.get("uid").cloned().unwrap_or(Value::Null),
        "attributes": {"subtype": "info", "updateconversation": true, "messagelabel": label},
        "group": {"members": group.get("members").cloned().unwrap_or_else(|| json!({}))},
    })
}

/// The messages of a creation: `GROUP_CREATED`, then one "joined group on creation" per member.
pub fn created_messages(group: &Value, now: i64) -> Vec<Value> {
    let creator = group.get("owner").cloned().unwrap_or(Value::Null);
    let created = json!({"key": "GROUP_CREATED", "parameters": {"creator": creator}});
    let mut messages = vec![info(group, "Group created", created, now)];
    for member in members(group) {
        let text = format!("{member} joined group on creation");
        messages.push(info(group, &text, joined_label(&member), now));
    }
    messages
}

/// The message of a join: "<first name, else id> added to group".
pub fn joined_message(group: &Value, member: &str, now: i64) -> Value {
    info(group, &format!("{member} added to group"), joined_label(member), now)
}

/// The message of a leave: "<id> removed from group" (to the members left).
pub fn left_message(group: &Value, member: &str, now: i64) -> Value {
    info(group, &format!("{member} removed from group"), left_label(member), now)
}

/// Who `PUT …/members` adds and removes: the ids of `new` not in `old`, and of `old` not in `new`.
pub fn diff(old: &[String], new: &[String]) -> (Vec<String>, Vec<String>) {
    let added = new.iter().filter(|m| !old.contains(m)).cloned().collect();
    let removed = old.iter().filter(|m| !new.contains(m)).cloned().collect();
    (added, removed)
}

/// Checks that every key a change of `group` leads to fits AMQP (a member's copy, its update).
///
/// # Errors
/// The [`crate::chat21::InputError`] text of the first that does not.
pub fn check_keys(app: &str, group: &str, members: &[String]) -> Result<(), String> {
    let fits = |what, words: &[&str]| key::fits(what, words).map_err(|e| e.to_string());
    fits("group timeline copy", &key::message(app, group, group))?;
    fits("system's message", &["apps", app, "outgoing", "users", SYSTEM, "messages", group, "outgoing"])?;
    for member in members {
        crate::chat21::check_id("member", member).map_err(|e| e.to_string())?;
        fits("member's copy", &key::message(app, member, group))?;
        fits("group update", &key::group(app, member, group))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(user: &str, admin: bool) -> Caller {
        Caller { user: user.into(), admin }
    }

    fn group() -> Value {
        let members = json!({"alice": 1, "bob": 1}).as_object().cloned().unwrap();
        new_group(&json!("G"), "g1", "app", "alice", members, Some(&json!({"k": "v"})), 7)
    }

    #[test]
    fn a_new_group_has_chat21s_fields() {
        assert_eq!(
            group(),
            json!({"name":"G","uid":"g1","appId":"app","owner":"alice","members":{"alice":1,"bob":1},
                   "createdOn":7,"updatedOn":7,"attributes":{"k":"v"}})
        );
        assert_eq!(members(&group()), ["alice", "bob"]);
    }

    #[test]
    fn the_owner_and_admins_manage_a_group() {
        assert!(may_manage(&group(), &caller("alice", false)));
        assert!(may_manage(&group(), &caller("carol", true)));
        assert!(!may_manage(&group(), &caller("bob", false)));
    }

    #[test]
    fn creation_sends_group_created_then_one_join_per_member() {
        let messages = created_messages(&group(), 9);
        let texts: Vec<_> = messages.iter().map(|m| m["text"].as_str().unwrap()).collect();
        assert_eq!(texts, ["Group created", "alice joined group on creation", "bob joined group on creation"]);
        assert_eq!(
            messages[0]["attributes"]["messagelabel"],
            json!({"key":"GROUP_CREATED","parameters":{"creator":"alice"}})
        );
        let joined = &messages[2];
        assert_eq!(
            (&joined["sender"], &joined["recipient"], &joined["channel_type"], &joined["recipient_fullname"]),
            (&json!("system"), &json!("g1"), &json!("group"), &json!("G"))
        );
        assert_eq!(joined["attributes"]["subtype"], "info");
        assert_eq!(joined["attributes"]["updateconversation"], true);
        assert_eq!(joined["attributes"]["messagelabel"]["key"], "MEMBER_JOINED_GROUP");
        assert_eq!(joined["attributes"]["messagelabel"]["parameters"]["member_id"], "bob");
        assert_eq!(joined["group"]["members"], json!({"alice":1,"bob":1}));
    }

    #[test]
    fn join_and_leave_texts_are_chat21s() {
        assert_eq!(joined_message(&group(), "carol", 1)["text"], "carol added to group");
        let left = left_message(&group(), "bob", 1);
        assert_eq!(left["text"], "bob removed from group");
        assert_eq!(
            left["attributes"]["messagelabel"],
            json!({"key":"MEMBER_LEFT_GROUP","parameters":{"member_id":"bob"}})
        );
    }

    #[test]
    fn an_update_carries_the_notification_and_whom_to_tell() {
        let body = update(&group(), &["alice".into(), "carol".into()], Some(left_label("carol")));
        assert_eq!(body["notify_to"], json!({"alice":1,"carol":1}));
        assert_eq!(body["group"]["notification"]["messagelabel"]["key"], "MEMBER_LEFT_GROUP");
        assert!(update(&group(), &[], None)["group"].get("notification").is_none());
        assert_eq!(update_key("app"), "apps.observer.app.groups.update");
        assert_eq!(system_key("app", "g1"), "apps.app.outgoing.users.system.messages.g1.outgoing");
    }

    #[test]
    fn set_members_tells_who_is_added_and_removed() {
        let ids = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let (added, removed) = diff(&ids(&["a", "b"]), &ids(&["b", "c"]));
        assert_eq!((added, removed), (ids(&["c"]), ids(&["a"])));
    }

    #[test]
    fn unroutable_members_and_long_ids_are_refused() {
        assert!(check_keys("app", "g1", &["alice".into()]).is_ok());
        assert!(check_keys("app", "g1", &["a.b".into()]).is_err());
        assert!(check_keys("app", &"g".repeat(120), &[]).is_err());
    }
}
