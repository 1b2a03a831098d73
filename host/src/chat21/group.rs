//! A chat21 group as the server side announces it on `groups.update` and as the store keeps it:
//! parsed here once, for routing (who the members are, who may post) and for the store.

use serde_json::{Map, Value};

use super::{InputError, check_id, key};

/// A group: id, name, owner, members and the whole JSON the server side sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub id: String,
    pub name: Option<String>,
    pub owner: Option<String>,
    pub members: Vec<String>,
    /// The `group` object of the update (with `uid`, `members`, `attributes`, …), kept whole
    /// for the store and for what the copies of the update carry.
    pub body: Value,
}

impl Group {
    /// A group object `{uid, name, owner, members: {uid: 1}}`, as stored.
    ///
    /// # Errors
    /// [`InputError::BadField`] when it is not an object or `uid` or `members` is unusable,
    /// [`InputError::InvalidId`] when an id cannot be routed.
    pub fn parse(group: &Value) -> Result<Group, InputError> {
        let object = object(group)?;
        let id = uid(object)?;
        let members = members(object, |_| Ok(()))?;
        Ok(Group::new(id, members, group))
    }

    /// Whether `user` is one of the members.
    pub fn is_member(&self, user: &str) -> bool {
        self.members.iter().any(|m| m == user)
    }

    fn new(id: &str, members: Vec<String>, body: &Value) -> Group {
        let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
        Group { id: id.to_owned(), name: text("name"), owner: text("owner"), members, body: body.clone() }
    }
}

/// A server-side group change `{group, notify_to}` of app `app`, checked: the group's id is
/// routable and its timeline key fits, and so does every key to a user of `notify_to` and to
/// a member of `group.members` (the members a stored group gives its messages).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupUpdate {
    pub group: Group,
    /// Who is told of the change: the keys of `notify_to`, in the order the JSON map keeps them.
    pub notify_to: Vec<String>,
}

impl GroupUpdate {
    /// Parses and checks the body of a `groups.update` whose group has at most `max_members`.
    ///
    /// # Errors
    /// [`InputError::BadField`] when `group`, `group.uid` or `notify_to` is missing or
    /// `group.members` is not an object, [`InputError::InvalidId`] or [`InputError::IdTooLong`]
    /// when an id cannot be routed, [`InputError::TooManyMembers`] over `max_members` (counted
    /// before any member is read).
    pub fn parse(app: &str, body: &Map<String, Value>, max_members: usize) -> Result<GroupUpdate, InputError> {
        let value = body.get("group").ok_or(InputError::BadField { field: "group", expected: "an object" })?;
        let group = object(value)?;
        let id = uid(group)?;
        if let Some(Value::Object(members)) = group.get("members")
            && members.len() > max_members
        {
            return Err(InputError::TooManyMembers { count: members.len(), limit: max_members });
        }
        key::fits("group timeline copy", &key::message(app, id, id))?;
        let notify_to = body
            .get("notify_to")
            .and_then(Value::as_object)
            .ok_or(InputError::BadField { field: "notify_to", expected: "an object" })?;
        for user in notify_to.keys() {
            check_id("user", user)?;
            key::fits("group update", &key::group(app, user, id))?;
        }
        let members = members(group, |member| key::fits("member's copy", &key::message(app, member, id)))?;
        Ok(GroupUpdate { group: Group::new(id, members, value), notify_to: notify_to.keys().cloned().collect() })
    }
}

fn object(group: &Value) -> Result<&Map<String, Value>, InputError> {
    group.as_object().ok_or(InputError::BadField { field: "group", expected: "an object" })
}

/// `group.uid`, a routable id.
fn uid(group: &Map<String, Value>) -> Result<&str, InputError> {
    let id = group
        .get("uid")
        .and_then(Value::as_str)
        .ok_or(InputError::BadField { field: "group.uid", expected: "a string" })?;
    check_id("group", id)?;
    Ok(id)
}

/// The ids of `group.members` (none when absent or null), each routable and passing `check`.
fn members(
    group: &Map<String, Value>,
    check: impl Fn(&str) -> Result<(), InputError>,
) -> Result<Vec<String>, InputError> {
    match group.get("members") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(members)) => members
            .keys()
            .map(|member| {
                check_id("member", member)?;
                check(member)?;
                Ok(member.clone())
            })
            .collect(),
        Some(_) => Err(InputError::BadField { field: "group.members", expected: "an object" }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_stored_group_parses_with_its_members() {
        let group =
            Group::parse(&json!({"uid":"g1","name":"G","owner":"alice","members":{"alice":1,"bob":1}})).unwrap();
        assert_eq!(
            (group.id.as_str(), group.name.as_deref(), group.owner.as_deref()),
            ("g1", Some("G"), Some("alice"))
        );
        assert_eq!(group.members, vec!["alice", "bob"]);
        assert!(group.is_member("bob") && !group.is_member("carol"));
        assert!(Group::parse(&json!({"uid":"g1"})).unwrap().members.is_empty());
        let code = |group: Value| Group::parse(&group).unwrap_err().code();
        assert_eq!(code(json!({"uid":"g1","members":["alice"]})), "bad-field");
        assert_eq!(code(json!({"uid":"g.1"})), "invalid-id");
        assert_eq!(code(json!([])), "bad-field");
    }

    #[test]
    fn an_update_checks_every_key_it_leads_to() {
        let body = json!({"group":{"uid":"g1","members":{"bob":1}},"notify_to":{"u1":1,"u2":1}});
        let update = GroupUpdate::parse("app", body.as_object().unwrap(), 1).unwrap();
        assert_eq!(update.notify_to, vec!["u1", "u2"]);
        assert_eq!(update.group.members, vec!["bob"]);
        let code = |body: Value| GroupUpdate::parse("app", body.as_object().unwrap(), 1).unwrap_err().code();
        // The timeline key is checked before the members.
        assert_eq!(code(json!({"group":{"uid":"g".repeat(110),"members":{"a.b":1}},"notify_to":{}})), "id-too-long");
        assert_eq!(code(json!({"group":{"uid":"g1","members":{"m".repeat(220):1}},"notify_to":{}})), "id-too-long");
    }

    #[test]
    fn an_update_over_the_member_cap_is_refused_before_its_members_are_read() {
        let members: Map<String, Value> = (0..3).map(|i| (format!("m{i}"), json!(1))).collect();
        let body = json!({"group":{"uid":"g1","members":members},"notify_to":{}});
        assert_eq!(GroupUpdate::parse("app", body.as_object().unwrap(), 3).unwrap().group.members.len(), 3);
        let err = GroupUpdate::parse("app", body.as_object().unwrap(), 2).unwrap_err();
        assert_eq!(err, InputError::TooManyMembers { count: 3, limit: 2 });
        // Counted first: an unroutable member is not what refuses it.
        let bad = json!({"group":{"uid":"g1","members":{"a.b":1,"c":1,"d":1}},"notify_to":{}});
        assert_eq!(GroupUpdate::parse("app", bad.as_object().unwrap(), 2).unwrap_err().code(), "too-many-members");
    }
}
