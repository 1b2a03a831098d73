//! chat21's MongoDB documents (`groups`, `conversations`, `messages`, as chat21-server's and
//! chat21-http-server's `chatdb` write them) read into what inboxd's store keeps. Pure.
//!
//! The shapes, from chat21's code: a message is the delivered message plus `timelineOf`,
//! `conversWith` and `app_id`, keyed by (`timelineOf`, `message_id`); a read receipt `$set`s
//! `status` on it, and upserts `{timelineOf, message_id, status}` alone when the message is not
//! there. A conversation is the last message plus `timelineOf`, `conversWith`, `key`, `is_new`,
//! `archived`, `last_message_text`, keyed by (`timelineOf`, `conversWith`); updates and archives
//! upsert patches without `app_id`. A group is `{uid, name, appId, owner, members: {uid: 1},
//! createdOn, updatedOn, attributes}`, keyed by `uid`; a join upserts `{uid, members.<m>, updatedOn}`.

use serde_json::{Map, Value};

use crate::chat21::{Group, InputError, check_id};

use super::extended_json::{self, WrapperError};

/// Which chat21 collection a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    Groups,
    Conversations,
    Messages,
}

impl Collection {
    pub fn name(self) -> &'static str {
        match self {
            Collection::Groups => "groups",
            Collection::Conversations => "conversations",
            Collection::Messages => "messages",
        }
    }
}

/// One document, read.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    Group(Group),
    Conversation(Conversation),
    Message(Message),
    /// A well-formed document inboxd does not import, and why.
    Skipped(Skip),
}

/// A user's conversation: the row of their conversation list.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub inbox: String,
    pub conversation: String,
    /// The document without `_id`: the last message and the list fields, as chat21 served it.
    pub body: Value,
    pub is_new: bool,
    pub archived: bool,
    /// chat21's `timestamp` (ms): the list's order.
    pub timestamp: i64,
}

/// A message in one user's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub inbox: String,
    pub conversation: String,
    pub message_id: String,
    pub status: i64,
    /// chat21's `timestamp` (ms): the history's order.
    pub timestamp: i64,
    /// The document without `_id`, as chat21's history API served it.
    pub body: Value,
}

/// Why a well-formed document is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    /// Its `app_id` (`appId` for groups) is another app's.
    OtherApp,
    /// A patch chat21 upserted without the document it patches (no `app_id`, or a message
    /// without `conversWith`): chat21's own reads never showed it.
    Incomplete,
    /// An id inboxd cannot route (`. / + * #`, whitespace, empty).
    UnroutableId,
}

impl Skip {
    pub fn describe(self) -> &'static str {
        match self {
            Skip::OtherApp => "of another app",
            Skip::Incomplete => "patches without their document (chat21 never showed them)",
            Skip::UnroutableId => "with ids inboxd cannot route",
        }
    }
}

/// Why a document is malformed: the file is refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Malformed {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("not a JSON object")]
    NotAnObject,
    #[error(transparent)]
    Wrapper(#[from] WrapperError),
    #[error("field `{field}` is missing or not {expected}")]
    Field { field: &'static str, expected: &'static str },
}

/// Reads one document of `collection` for app `app` from its Extended JSON text.
///
/// # Errors
/// [`Malformed`] when it is not JSON, not an object, or a key field is missing or mistyped.
pub fn read(collection: Collection, app: &str, text: &str) -> Result<Document, Malformed> {
    let value: Value = serde_json::from_str(text).map_err(|e| Malformed::Json(e.to_string()))?;
    read_value(collection, app, value)
}

/// [`read`] for a document already parsed (an element of a `--jsonArray` export).
///
/// # Errors
/// As [`read`].
pub fn read_value(collection: Collection, app: &str, value: Value) -> Result<Document, Malformed> {
    let Value::Object(mut doc) = extended_json::plain(value)? else { return Err(Malformed::NotAnObject) };
    doc.remove("_id");
    match collection {
        Collection::Groups => group(app, doc),
        Collection::Conversations => conversation(app, doc),
        Collection::Messages => message(app, doc),
    }
}

fn group(app: &str, doc: Map<String, Value>) -> Result<Document, Malformed> {
    text(&doc, "uid")?;
    if !matches!(doc.get("members"), None | Some(Value::Null | Value::Object(_))) {
        return Err(Malformed::Field { field: "members", expected: "an object" });
    }
    if other_app(&doc, "appId", app)? {
        return Ok(Document::Skipped(Skip::OtherApp));
    }
    match Group::parse(&Value::Object(doc)) {
        Ok(group) => Ok(Document::Group(group)),
        Err(InputError::InvalidId { .. }) => Ok(Document::Skipped(Skip::UnroutableId)),
        Err(_) => Err(Malformed::Field { field: "uid", expected: "a string" }),
    }
}

fn conversation(app: &str, doc: Map<String, Value>) -> Result<Document, Malformed> {
    let inbox = text(&doc, "timelineOf")?.to_owned();
    let conversation = text(&doc, "conversWith")?.to_owned();
    let is_new = flag(&doc, "is_new");
    let archived = flag(&doc, "archived");
    let timestamp = number(&doc, "timestamp");
    if let Some(skip) = skipped(&doc, app, &[&inbox, &conversation])? {
        return Ok(Document::Skipped(skip));
    }
    Ok(Document::Conversation(Conversation {
        inbox,
        conversation,
        body: Value::Object(doc),
        is_new,
        archived,
        timestamp: timestamp.unwrap_or(0),
    }))
}

fn message(app: &str, doc: Map<String, Value>) -> Result<Document, Malformed> {
    let inbox = text(&doc, "timelineOf")?.to_owned();
    let message_id = text(&doc, "message_id")?.to_owned();
    let conversation = match doc.get("conversWith") {
        None | Some(Value::Null) => return Ok(Document::Skipped(Skip::Incomplete)),
        Some(_) => text(&doc, "conversWith")?.to_owned(),
    };
    let status = number(&doc, "status").unwrap_or(0);
    let timestamp = number(&doc, "timestamp").unwrap_or(0);
    if let Some(skip) = skipped(&doc, app, &[&inbox, &conversation, &message_id])? {
        return Ok(Document::Skipped(skip));
    }
    Ok(Document::Message(Message { inbox, conversation, message_id, status, timestamp, body: Value::Object(doc) }))
}

/// Why a conversation or message with these `ids` is left out, if it is.
fn skipped(doc: &Map<String, Value>, app: &str, ids: &[&str]) -> Result<Option<Skip>, Malformed> {
    if matches!(doc.get("app_id"), None | Some(Value::Null)) {
        return Ok(Some(Skip::Incomplete));
    }
    if other_app(doc, "app_id", app)? {
        return Ok(Some(Skip::OtherApp));
    }
    Ok(ids.iter().any(|id| check_id("document", id).is_err()).then_some(Skip::UnroutableId))
}

/// Whether the document names an app in `field` other than `app` (absent: no).
fn other_app(doc: &Map<String, Value>, field: &'static str, app: &str) -> Result<bool, Malformed> {
    match doc.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::String(found)) => Ok(found != app),
        Some(_) => Err(Malformed::Field { field, expected: "a string" }),
    }
}

fn text<'a>(doc: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, Malformed> {
    doc.get(field).and_then(Value::as_str).ok_or(Malformed::Field { field, expected: "a string" })
}

/// A boolean field, `false` when absent. A conversation update `$set` whatever the client sent,
/// so another type (`"false"`) is read as absent rather than refusing the file; chat21's own
/// reads (`archived: false`) did not match it either.
fn flag(doc: &Map<String, Value>, field: &str) -> bool {
    doc.get(field).and_then(Value::as_bool).unwrap_or(false)
}

/// An integer field (a whole double or a numeric string counts), `None` when absent or of
/// another type: chat21 kept a client's `timestamp` and a receipt's `status` as sent (a receipt
/// `{"status": "200"}` passed its loose `!= 200` check), so such a value is data, not a broken file.
fn number(doc: &Map<String, Value>, field: &str) -> Option<i64> {
    let whole = |f: f64| (f.is_finite() && f.abs() < 9.2e18).then_some(f as i64);
    match doc.get(field)? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().and_then(whole)),
        Value::String(text) => {
            let text = text.trim();
            text.parse::<i64>().ok().or_else(|| text.parse::<f64>().ok().and_then(whole))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const APP: &str = "tilechat";

    fn doc(collection: Collection, value: Value) -> Result<Document, Malformed> {
        read(collection, APP, &value.to_string())
    }

    #[test]
    fn a_message_as_chat21_server_persists_it() {
        let line = r#"{"_id":{"$oid":"5f1d7b2c9d1e8a0012345678"},"timelineOf":"bob","message_id":"m1",
            "app_id":"tilechat","conversWith":"alice","sender":"alice","recipient":"bob","text":"hi",
            "type":"text","channel_type":"direct","status":{"$numberInt":"200"},
            "timestamp":{"$numberLong":"1700000000123"}}"#;
        let Document::Message(m) = read(Collection::Messages, APP, &line.replace('\n', "")).unwrap() else { panic!() };
        assert_eq!((m.inbox.as_str(), m.conversation.as_str(), m.message_id.as_str()), ("bob", "alice", "m1"));
        assert_eq!((m.status, m.timestamp), (200, 1_700_000_000_123));
        assert!(m.body.get("_id").is_none());
        assert_eq!(m.body["text"], "hi");
    }

    #[test]
    fn a_receipt_patch_without_its_message_and_other_apps_are_skipped() {
        let patch = json!({"timelineOf": "bob", "message_id": "m1", "status": 200});
        assert_eq!(doc(Collection::Messages, patch).unwrap(), Document::Skipped(Skip::Incomplete));
        let other = json!({"timelineOf": "bob", "message_id": "m1", "conversWith": "a", "app_id": "other"});
        assert_eq!(doc(Collection::Messages, other).unwrap(), Document::Skipped(Skip::OtherApp));
        let dotted = json!({"timelineOf": "b.ob", "message_id": "m1", "conversWith": "a", "app_id": APP});
        assert_eq!(doc(Collection::Messages, dotted).unwrap(), Document::Skipped(Skip::UnroutableId));
        // An archive patch chat21 upserted on a conversation it did not have.
        let archive = json!({"timelineOf": "bob", "conversWith": "alice", "archived": true});
        assert_eq!(doc(Collection::Conversations, archive).unwrap(), Document::Skipped(Skip::Incomplete));
    }

    #[test]
    fn a_conversation_keeps_its_flags_and_time() {
        let conversation = json!({"_id": {"$oid": "x"}, "timelineOf": "bob", "conversWith": "alice", "app_id": APP,
            "key": "alice", "is_new": true, "archived": true, "last_message_text": "hi", "text": "hi",
            "timestamp": {"$date": "2023-11-14T22:13:20.123Z"}});
        let Document::Conversation(c) = doc(Collection::Conversations, conversation).unwrap() else { panic!() };
        assert_eq!((c.inbox.as_str(), c.conversation.as_str(), c.is_new, c.archived), ("bob", "alice", true, true));
        assert_eq!((c.timestamp, &c.body["text"]), (1_700_000_000_123, &json!("hi")));
    }

    #[test]
    fn groups_as_chat21_http_server_creates_and_joins_them() {
        let created = json!({"_id": {"$oid": "x"}, "uid": "group-1", "name": "G", "appId": APP, "owner": "alice",
            "members": {"alice": 1, "bob": 1}, "createdOn": {"$numberLong": "1"}, "updatedOn": 1});
        let Document::Group(g) = doc(Collection::Groups, created).unwrap() else { panic!() };
        assert_eq!((g.id.as_str(), g.members.clone()), ("group-1", vec!["alice".to_owned(), "bob".to_owned()]));
        assert_eq!(g.body["createdOn"], 1);
        // A join upserted on a group that was not there: no appId, still a group.
        assert!(matches!(
            doc(Collection::Groups, json!({"uid": "g2", "members": {"carol": 1}})),
            Ok(Document::Group(_))
        ));
        let other = json!({"uid": "g3", "appId": "other", "members": {}});
        assert_eq!(doc(Collection::Groups, other).unwrap(), Document::Skipped(Skip::OtherApp));
        let dotted = json!({"uid": "g4", "appId": APP, "members": {"a.b": 1}});
        assert_eq!(doc(Collection::Groups, dotted).unwrap(), Document::Skipped(Skip::UnroutableId));
    }

    #[test]
    fn values_chat21_stored_as_clients_sent_them_are_read_not_refused() {
        let receipt = json!({"timelineOf": "b", "message_id": "m", "conversWith": "a", "app_id": APP,
            "status": "200", "timestamp": "1700000000123"});
        let Document::Message(m) = doc(Collection::Messages, receipt).unwrap() else { panic!() };
        assert_eq!((m.status, m.timestamp), (200, 1_700_000_000_123));
        let odd = json!({"timelineOf": "b", "message_id": "m", "conversWith": "a", "app_id": APP,
            "status": true, "timestamp": "yesterday"});
        let Document::Message(m) = doc(Collection::Messages, odd).unwrap() else { panic!() };
        assert_eq!((m.status, m.timestamp), (0, 0));
        let patched = json!({"timelineOf": "b", "conversWith": "a", "app_id": APP, "is_new": "false"});
        let Document::Conversation(c) = doc(Collection::Conversations, patched).unwrap() else { panic!() };
        assert!(!c.is_new && !c.archived);
    }

    #[test]
    fn malformed_documents_are_refused() {
        let err = |c: Collection, text: &str| read(c, APP, text).unwrap_err();
        assert!(matches!(err(Collection::Messages, "{\"timelineOf\": "), Malformed::Json(_)));
        assert_eq!(err(Collection::Messages, "[1]"), Malformed::NotAnObject);
        assert_eq!(
            err(Collection::Messages, r#"{"message_id":"m"}"#),
            Malformed::Field { field: "timelineOf", expected: "a string" }
        );
        assert!(matches!(err(Collection::Messages, r#"{"timestamp":{"$numberLong":"x"}}"#), Malformed::Wrapper(_)));
        assert_eq!(
            err(Collection::Conversations, r#"{"timelineOf":"b","conversWith":7}"#),
            Malformed::Field { field: "conversWith", expected: "a string" }
        );
        assert_eq!(
            err(Collection::Groups, r#"{"uid":"g","members":["a"]}"#),
            Malformed::Field { field: "members", expected: "an object" }
        );
        assert_eq!(err(Collection::Groups, r#"{"name":"g"}"#), Malformed::Field { field: "uid", expected: "a string" });
    }
}
