//! chat21's server-side delivery (`apps.observer.<app>.users.<inbox>.messages.<conv>.delivered`):
//! a stored message, status DELIVERED, put as is into one inbox, as chat21's `process_delivered`.

use serde_json::{Map, Value};

use super::{InboxCopy, InputError, Payload, Status, check_id, key};

/// The id of a message delivered as is: its body must carry chat21's DELIVERED status (chat21
/// refuses any other) and a routable `message_id`.
///
/// # Errors
/// [`InputError::BadField`] for another status or a missing id, [`InputError::InvalidId`] for
/// an id with routing characters.
pub fn message_id(body: &Map<String, Value>) -> Result<&str, InputError> {
    if body.get("status").and_then(Value::as_i64) != Some(Status::Delivered.code()) {
        return Err(InputError::BadField { field: "status", expected: "150 (DELIVERED)" });
    }
    let id = body
        .get("message_id")
        .and_then(Value::as_str)
        .ok_or(InputError::BadField { field: "message_id", expected: "a string" })?;
    check_id("message", id)?;
    Ok(id)
}

/// The one copy of a message delivered as is into `inbox`'s conversation with `conversation`,
/// and its id.
///
/// # Errors
/// As [`message_id`], and [`InputError::IdTooLong`] when the copy's key would not fit AMQP.
pub fn delivered_copy(
    app: &str,
    inbox: &str,
    conversation: &str,
    body: Map<String, Value>,
) -> Result<(String, InboxCopy), InputError> {
    let message_id = message_id(&body)?.to_owned();
    let routing_key = key::build("delivered copy", &key::message(app, inbox, conversation))?;
    let copy = InboxCopy {
        inbox_of: inbox.to_owned(),
        conversation: conversation.to_owned(),
        status: Some(Status::Delivered),
        routing_key,
        body: Payload::new(Value::Object(body)),
    };
    Ok((message_id, copy))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn only_a_delivered_message_with_an_id_is_delivered_as_is() {
        let history = body(json!({"message_id": "m1", "status": 150, "text": "hi", "__history": "true"}));
        let (id, copy) = delivered_copy("app", "carol", "group-1", history.clone()).unwrap();
        assert_eq!(id, "m1");
        assert_eq!(copy.routing_key, "apps.app.users.carol.messages.group-1.clientadded");
        assert_eq!(copy.status, Some(Status::Delivered));
        assert_eq!(*copy.body, Value::Object(history));
        for (refused, code) in [
            (json!({"message_id": "m1", "status": 100}), "bad-field"),
            (json!({"message_id": "m1"}), "bad-field"),
            (json!({"status": 150}), "bad-field"),
            (json!({"message_id": "m.1", "status": 150}), "invalid-id"),
        ] {
            assert_eq!(delivered_copy("app", "carol", "g", body(refused)).unwrap_err().code(), code);
        }
    }
}
