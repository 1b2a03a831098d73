//! The group routes of chat21-http-server: create, join, set members, leave, rename, attributes.
//! Each stores the group before anything else (routing reads the store; this process's directory
//! is told at once, every other process's when it hears the `groups.update`), then publishes what
//! chat21 publishes, confirmed: `groups.update` to the
//! members it names (which inboxd's pipeline turns into `groups.<gid>.clientupdated` copies) and
//! `system`'s info messages (which take the pipeline like any message), and the join history.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::group_change::{self as change, system_key, update_key};
use super::join_history;
use super::{Api, Call, Refusal, body_object, routable, success, truthy};
use crate::chat21::Group;
use crate::clock::now_ms;
use crate::routing::GroupLookup;
use crate::store::Write;
use crate::token::Caller;

type Answer = Result<Json<Value>, Refusal>;

/// `POST /api/<app>/groups` `{group_name, group_members, group_id?, attributes?, group_owner?}`:
/// `201 {success, group}`. A non-admin caller is always a member and the owner; an existing id
/// is taken over only by its owner or an admin (chat21 lets anyone overwrite it).
pub(super) async fn create(
    api: Call,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Refusal> {
    let caller = api.caller(&app)?;
    let body = body_object(&body);
    let name = truthy(&body, "group_name").ok_or_else(|| Refusal::Invalid("group_name not present!".into()))?;
    let mut members = match truthy(&body, "group_members") {
        Some(Value::Object(members)) => members.clone(),
        Some(_) => return Err(Refusal::Invalid("group_members must be an object {member_id: 1}".into())),
        None => return Err(Refusal::Invalid("group_members not present!".into())),
    };
    let id = match truthy(&body, "group_id") {
        Some(id) => routable("group_id", id)?,
        None => format!("group-{}", uuid::Uuid::new_v4()),
    };
    let owner = match truthy(&body, "group_owner").filter(|_| caller.admin) {
        Some(owner) => routable("group_owner", owner)?,
        None => caller.user.clone(),
    };
    if !caller.admin {
        members.insert(caller.user.clone(), json!(1));
    }
    let group = change::new_group(name, &id, &app, &owner, members, truthy(&body, "attributes"), now_ms());
    let _one_at_a_time = api.group_changes.lock().await;
    if let Some(existing) = api.store.group(&app, &id).await?
        && !change::may_manage(&existing.body, &caller)
    {
        return Err(Refusal::Denied("Not allowed".into()));
    }
    api.save(&app, &group).await?;
    // chat21 publishes no update on creation; one told to nobody lets every inboxd process's
    // directory hold the group before `system`'s messages are routed.
    let mut messages = vec![(update_key(&app), change::update(&group, &[], None))];
    messages.extend(change::created_messages(&group, now_ms()).into_iter().map(|m| (system_key(&app, &id), m)));
    api.publish(&messages).await?;
    Ok((StatusCode::CREATED, Json(json!({"success": true, "group": group}))))
}

/// `POST /api/<app>/groups/<group>/members` `{member_id}`: the owner or an admin adds a member;
/// the members are told, `system` says so, the new member gets the group's history.
pub(super) async fn join(api: Call, Path((app, id)): Path<(String, String)>, body: Bytes) -> Answer {
    let caller = api.caller(&app)?;
    let body = body_object(&body);
    let member = truthy(&body, "member_id").ok_or_else(|| Refusal::Invalid("member_id is mandatory!".into()))?;
    let member = routable("member_id", member)?;
    let _one_at_a_time = api.group_changes.lock().await;
    let mut group = api.managed(&app, &id, &caller, "Not allowed").await?;
    if change::members(&group).contains(&member) {
        return Err(Refusal::Denied("Already a member".into()));
    }
    // A stored group's members are an object or null (`Group::parse`): either takes the index.
    group["members"][&member] = json!(1);
    group["updatedOn"] = json!(now_ms());
    api.save(&app, &group).await?;
    let mut messages =
        vec![(update_key(&app), change::update(&group, &change::members(&group), Some(change::joined_label(&member))))];
    let writes = api.welcome(&app, &group, &member, &mut messages).await?;
    api.publish(&messages).await?;
    api.store.apply(&app, writes.into()).await.map_err(|e| Refusal::Failed(e.into()))?;
    Ok(success())
}

/// `PUT /api/<app>/groups/<group>/members` `{members: {uid: 1}}`: the owner or an admin sets
/// the members; the old members are told, each new one is welcomed as on a join.
pub(super) async fn set_members(api: Call, Path((app, id)): Path<(String, String)>, body: Bytes) -> Answer {
    let caller = api.caller(&app)?;
    let body = body_object(&body);
    let members = match truthy(&body, "members") {
        Some(Value::Object(members)) => members.clone(),
        Some(_) => return Err(Refusal::Invalid("members must be an object {member_id: 1}".into())),
        None => return Err(Refusal::Invalid("members is mandatory".into())),
    };
    let _one_at_a_time = api.group_changes.lock().await;
    let mut group = api.managed(&app, &id, &caller, "Unauthorized").await?;
    let old = change::members(&group);
    let new: Vec<String> = members.keys().cloned().collect();
    let (added, removed) = change::diff(&old, &new);
    if added.is_empty() && removed.is_empty() {
        return Err(Refusal::Denied("Same members in group, skipping setGroupMembers()".into()));
    }
    group["members"] = Value::Object(members);
    group["updatedOn"] = json!(now_ms());
    api.save(&app, &group).await?;
    let mut messages = vec![(update_key(&app), change::update(&group, &old, None))];
    let mut writes = Vec::new();
    for member in &added {
        writes.extend(api.welcome(&app, &group, member, &mut messages).await?);
    }
    api.publish(&messages).await?;
    api.store.apply(&app, writes.into()).await.map_err(|e| Refusal::Failed(e.into()))?;
    Ok(success())
}

/// `DELETE /api/<app>/groups/<group>/members/<member>`: a member leaves, or the owner or an
/// admin removes one (chat21 lets any member remove any other); the old members are told,
/// `system` tells the ones left.
pub(super) async fn leave(api: Call, Path((app, id, member)): Path<(String, String, String)>) -> Answer {
    let caller = api.caller(&app)?;
    let _one_at_a_time = api.group_changes.lock().await;
    let mut group = api.store.group(&app, &id).await?.ok_or_else(not_found)?.body;
    let old = change::members(&group);
    let allowed = change::may_manage(&group, &caller) || caller.user == member;
    if !allowed || !old.contains(&member) {
        return Err(not_found());
    }
    if let Some(members) = group["members"].as_object_mut() {
        members.remove(&member);
    }
    api.save(&app, &group).await?;
    let update = change::update(&group, &old, Some(change::left_label(&member)));
    let left = change::left_message(&group, &member, now_ms());
    api.publish(&[(update_key(&app), update), (system_key(&app, &id), left)]).await?;
    Ok(success())
}

/// `PUT /api/<app>/groups/<group>` `{group_name}`: the owner or an admin renames the group.
pub(super) async fn rename(api: Call, Path((app, id)): Path<(String, String)>, body: Bytes) -> Answer {
    let body = body_object(&body);
    let caller = api.caller(&app)?;
    let name = truthy(&body, "group_name").ok_or_else(|| Refusal::Invalid("group_name is mandatory".into()))?;
    api.change(&app, &id, &caller, |group| {
        group["name"] = name.clone();
        change::renamed_label(name)
    })
    .await
}

/// `PUT /api/<app>/groups/<group>/attributes` `{attributes}`: the owner or an admin replaces them.
pub(super) async fn attributes(api: Call, Path((app, id)): Path<(String, String)>, body: Bytes) -> Answer {
    let body = body_object(&body);
    let caller = api.caller(&app)?;
    let attributes = truthy(&body, "attributes").ok_or_else(|| Refusal::Invalid("attributes is mandatory".into()))?;
    api.change(&app, &id, &caller, |group| {
        group["attributes"] = attributes.clone();
        change::attributes_label(attributes)
    })
    .await
}

fn not_found() -> Refusal {
    Refusal::Denied("Not found".into())
}

impl Api {
    /// The stored group `id` if `caller` may manage it, else chat21's refusal (`denied`).
    async fn managed(&self, app: &str, id: &str, caller: &Caller, denied: &str) -> Result<Value, Refusal> {
        let group = self.store.group(app, id).await?.ok_or_else(not_found)?.body;
        if change::may_manage(&group, caller) { Ok(group) } else { Err(Refusal::Denied(denied.to_owned())) }
    }

    /// A rename or attributes change: `apply` changes the group and names the notification;
    /// the members are told.
    async fn change(&self, app: &str, id: &str, caller: &Caller, apply: impl FnOnce(&mut Value) -> Value) -> Answer {
        let _one_at_a_time = self.group_changes.lock().await;
        let mut group = self.managed(app, id, caller, "Unauthorized").await?;
        let label = apply(&mut group);
        group["updatedOn"] = json!(now_ms());
        self.save(app, &group).await?;
        let update = change::update(&group, &change::members(&group), Some(label));
        self.publish(&[(update_key(app), update)]).await?;
        Ok(success())
    }

    /// Stores `group` and tells this process's directory; refuses one with more members than
    /// the cap (before any is checked or welcomed) or whose keys cannot be built.
    async fn save(&self, app: &str, group: &Value) -> Result<(), Refusal> {
        let id = group.get("uid").and_then(Value::as_str).unwrap_or_default();
        let members = change::members(group);
        if members.len() > self.max_group_members {
            let (count, limit) = (members.len(), self.max_group_members);
            return Err(Refusal::Denied(format!("Too many members: {count}, at most {limit}")));
        }
        change::check_keys(app, id, &members).map_err(Refusal::Invalid)?;
        let parsed = Group::parse(group).map_err(|err| Refusal::Invalid(err.to_string()))?;
        let write: Arc<[Write]> = vec![Write::Group(parsed.clone())].into();
        self.store.apply(app, write).await.map_err(|e| Refusal::Failed(e.into()))?;
        self.groups.remember(parsed);
        Ok(())
    }

    /// `system`'s "added to group" message and the group's history for `member` (read before
    /// the message is sent, so it is not in it twice); returns the history's timeline rows.
    async fn welcome(
        &self,
        app: &str,
        group: &Value,
        member: &str,
        messages: &mut Vec<(String, Value)>,
    ) -> Result<Vec<Write>, Refusal> {
        let id = group.get("uid").and_then(Value::as_str).unwrap_or_default();
        let (copies, writes) = join_history::split(join_history::copies(&self.store, app, id, member).await?);
        messages.push((system_key(app, id), change::joined_message(group, member, now_ms())));
        messages.extend(copies);
        Ok(writes)
    }

    async fn publish(&self, messages: &[(String, Value)]) -> Result<(), Refusal> {
        self.outbound.publish(messages).await.map_err(Refusal::Unpublished)
    }
}
