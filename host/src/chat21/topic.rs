//! chat21 routing keys: the typed form of every key inboxd consumes, and the bindings for them.
//! MQTT topic levels (`/`) arrive as AMQP routing-key words (`.`).

use super::InputError;

/// What an inbound routing key asks inboxd to do; one variant per row of the protocol table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `apps.<app>.outgoing.users.<sender>.messages.<recipient>.outgoing`
    Outgoing { sender: String, recipient: String },
    /// `apps.<app>.users.<me>.messages.<conversation>.<message_id>.update`
    ReadReceipt { me: String, conversation: String, message_id: String },
    /// `apps.<app>.users.<me>.conversations.<conversation>.update`
    ConversationUpdate { me: String, conversation: String },
    /// `apps.<app>.users.<me>.conversations.<conversation>.archive`
    ConversationArchive { me: String, conversation: String },
    /// `apps.<app>.users.<me>.presence.<client>`
    Presence { me: String, client: String },
    /// `apps.observer.<app>.groups.update`, published by the server side only
    GroupUpdate,
    /// `apps.observer.<app>.users.<inbox>.messages.<conversation>.delivered`, published by the
    /// server side only: a stored message delivered as is into `inbox` (chat21-http-server
    /// copies a group's history to a member who joins this way).
    Delivered { inbox: String, conversation: String },
}

/// The kind of event, a bounded label for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Message,
    ReadReceipt,
    ConversationUpdate,
    ConversationArchive,
    Presence,
    GroupUpdate,
}

impl EventKind {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::ReadReceipt => "read-receipt",
            EventKind::ConversationUpdate => "conversation-update",
            EventKind::ConversationArchive => "conversation-archive",
            EventKind::Presence => "presence",
            EventKind::GroupUpdate => "group-update",
        }
    }
}

impl Topic {
    /// Who the event is from and whom (or which conversation, or client) it is about, for logs.
    pub fn parties(&self) -> (&str, &str) {
        match self {
            Topic::Outgoing { sender, recipient } => (sender, recipient),
            Topic::ReadReceipt { me, conversation, .. }
            | Topic::ConversationUpdate { me, conversation }
            | Topic::ConversationArchive { me, conversation } => (me, conversation),
            Topic::Presence { me, client } => (me, client),
            Topic::Delivered { inbox, conversation } => (inbox, conversation),
            Topic::GroupUpdate => ("", ""),
        }
    }

    /// Parses a routing key of app `app`.
    ///
    /// # Errors
    /// [`InputError::UnknownTopic`] for keys outside the protocol table,
    /// [`InputError::WrongApp`] for another app's key, [`InputError::InvalidId`] for ids
    /// that contain routing or wildcard characters.
    pub fn parse(app: &str, routing_key: &str) -> Result<Topic, InputError> {
        let words: Vec<&str> = routing_key.split('.').collect();
        let unknown = || InputError::UnknownTopic(routing_key.to_owned());
        let topic_app = match words.as_slice() {
            ["apps", "observer", app, "groups", "update"] => app,
            ["apps", "observer", app, "users", _, "messages", _, "delivered"] => app,
            ["apps", app, ..] => app,
            _ => return Err(unknown()),
        };
        if *topic_app != app {
            return Err(InputError::WrongApp { expected: app.to_owned(), found: (*topic_app).to_owned() });
        }
        let topic = match words.as_slice() {
            ["apps", "observer", _, "groups", "update"] => Topic::GroupUpdate,
            ["apps", "observer", _, "users", inbox, "messages", conv, "delivered"] => {
                Topic::Delivered { inbox: id("user", inbox)?, conversation: id("conversation", conv)? }
            }
            ["apps", _, "outgoing", "users", sender, "messages", recipient, "outgoing"] => {
                Topic::Outgoing { sender: id("sender", sender)?, recipient: id("recipient", recipient)? }
            }
            ["apps", _, "users", me, "messages", conv, msg, "update"] => Topic::ReadReceipt {
                me: id("user", me)?,
                conversation: id("conversation", conv)?,
                message_id: id("message", msg)?,
            },
            ["apps", _, "users", me, "conversations", conv, "update"] => {
                Topic::ConversationUpdate { me: id("user", me)?, conversation: id("conversation", conv)? }
            }
            ["apps", _, "users", me, "conversations", conv, "archive"] => {
                Topic::ConversationArchive { me: id("user", me)?, conversation: id("conversation", conv)? }
            }
            ["apps", _, "users", me, "presence", client] => {
                Topic::Presence { me: id("user", me)?, client: id("client", client)? }
            }
            _ => return Err(unknown()),
        };
        Ok(topic)
    }

    /// The routing key of this topic for `app`, as [`Topic::parse`] reads it.
    pub fn routing_key(&self, app: &str) -> String {
        match self {
            Topic::Outgoing { sender, recipient } => {
                format!("apps.{app}.outgoing.users.{sender}.messages.{recipient}.outgoing")
            }
            Topic::ReadReceipt { me, conversation, message_id } => {
                format!("apps.{app}.users.{me}.messages.{conversation}.{message_id}.update")
            }
            Topic::ConversationUpdate { me, conversation } => {
                format!("apps.{app}.users.{me}.conversations.{conversation}.update")
            }
            Topic::ConversationArchive { me, conversation } => {
                format!("apps.{app}.users.{me}.conversations.{conversation}.archive")
            }
            Topic::Presence { me, client } => format!("apps.{app}.users.{me}.presence.{client}"),
            Topic::GroupUpdate => format!("apps.observer.{app}.groups.update"),
            Topic::Delivered { inbox, conversation } => {
                format!("apps.observer.{app}.users.{inbox}.messages.{conversation}.delivered")
            }
        }
    }
}

/// The routing keys inboxd binds for `app`: exactly the protocol table, nothing broader.
pub fn binding_keys(app: &str) -> Vec<String> {
    vec![
        format!("apps.{app}.outgoing.users.*.messages.*.outgoing"),
        format!("apps.{app}.users.*.messages.*.*.update"),
        format!("apps.{app}.users.*.conversations.*.update"),
        format!("apps.{app}.users.*.conversations.*.archive"),
        format!("apps.{app}.users.*.presence.*"),
        format!("apps.observer.{app}.groups.update"),
        format!("apps.observer.{app}.users.*.messages.*.delivered"),
    ]
}

/// Checks that `value` can be used as one routing-key word and one MQTT topic level.
///
/// # Errors
/// [`InputError::InvalidId`] when it is empty or contains `. / + * #` or whitespace.
pub fn check_id(what: &'static str, value: &str) -> Result<(), InputError> {
    let bad = |c: char| matches!(c, '.' | '/' | '+' | '*' | '#') || c.is_whitespace() || c.is_control();
    if value.is_empty() || value.contains(bad) {
        return Err(InputError::InvalidId { what, id: value.to_owned() });
    }
    Ok(())
}

fn id(what: &'static str, value: &str) -> Result<String, InputError> {
    check_id(what, value)?;
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_row_of_the_protocol_table() {
        let t = |k: &str| Topic::parse("tilechat", k).unwrap();
        assert_eq!(
            t("apps.tilechat.outgoing.users.alice.messages.bob.outgoing"),
            Topic::Outgoing { sender: "alice".into(), recipient: "bob".into() }
        );
        assert_eq!(
            t("apps.tilechat.users.bob.messages.alice.m1.update"),
            Topic::ReadReceipt { me: "bob".into(), conversation: "alice".into(), message_id: "m1".into() }
        );
        assert_eq!(
            t("apps.tilechat.users.bob.conversations.alice.update"),
            Topic::ConversationUpdate { me: "bob".into(), conversation: "alice".into() }
        );
        assert_eq!(
            t("apps.tilechat.users.bob.conversations.alice.archive"),
            Topic::ConversationArchive { me: "bob".into(), conversation: "alice".into() }
        );
        assert_eq!(t("apps.tilechat.users.bob.presence.c1"), Topic::Presence { me: "bob".into(), client: "c1".into() });
        assert_eq!(t("apps.observer.tilechat.groups.update"), Topic::GroupUpdate);
        assert_eq!(
            t("apps.observer.tilechat.users.carol.messages.group-1.delivered"),
            Topic::Delivered { inbox: "carol".into(), conversation: "group-1".into() }
        );
    }

    #[test]
    fn every_topic_reads_back_from_its_routing_key() {
        let (me, other) = ("bob".to_owned(), "alice".to_owned());
        for topic in [
            Topic::Outgoing { sender: me.clone(), recipient: other.clone() },
            Topic::ReadReceipt { me: me.clone(), conversation: other.clone(), message_id: "m1".into() },
            Topic::ConversationUpdate { me: me.clone(), conversation: other.clone() },
            Topic::ConversationArchive { me: me.clone(), conversation: other.clone() },
            Topic::Presence { me: me.clone(), client: "c1".into() },
            Topic::GroupUpdate,
            Topic::Delivered { inbox: me.clone(), conversation: other.clone() },
        ] {
            assert_eq!(Topic::parse("tilechat", &topic.routing_key("tilechat")), Ok(topic));
        }
    }

    #[test]
    fn refuses_unknown_keys_other_apps_and_bad_ids() {
        let p = |k: &str| Topic::parse("tilechat", k).unwrap_err().code();
        assert_eq!(p("inboxd.tilechat"), "unknown-topic");
        assert_eq!(p("apps.tilechat.users.bob.groups.g.update"), "unknown-topic");
        assert_eq!(p("apps.tilechat.outgoing.users.a.messages.b.c.outgoing"), "unknown-topic");
        assert_eq!(p("apps.other.outgoing.users.a.messages.b.outgoing"), "wrong-app");
        assert_eq!(p("apps.observer.other.groups.update"), "wrong-app");
        assert_eq!(p("apps.observer.other.users.a.messages.g.delivered"), "wrong-app");
        assert_eq!(p("apps.tilechat.outgoing.users.a*.messages.b.outgoing"), "invalid-id");
        assert_eq!(p("apps.tilechat.outgoing.users.a.messages.#.outgoing"), "invalid-id");
        assert_eq!(p("apps.tilechat.users.a/b.presence.c"), "invalid-id");
        assert_eq!(p("apps.tilechat.users..presence.c"), "invalid-id");
    }

    #[test]
    fn every_binding_key_parses_back_to_its_own_row() {
        let keys = binding_keys("tilechat");
        assert_eq!(keys.len(), 7);
        for key in keys {
            let concrete = key.replace('*', "x");
            assert!(Topic::parse("tilechat", &concrete).is_ok(), "{key}");
        }
    }

    #[test]
    fn check_id_accepts_uuids_and_group_ids() {
        assert!(check_id("user", "5f1d2c3e-aaaa-bbbb-cccc-000000000000").is_ok());
        assert!(check_id("group", "group-123_abc").is_ok());
        assert!(check_id("user", "a b").is_err());
    }
}
