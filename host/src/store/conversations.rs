//! The stored conversations routing reads for an archive (chat21 publishes the stored
//! conversation): once the writes handed to the store before it are committed (an empty request
//! through the writer's queue), one indexed read on the runtime while the worker thread waits,
//! bounded.

use serde_json::{Map, Value};
use tokio::runtime::Handle;

use super::groups::MISS_READ_TIMEOUT;
use super::{Store, StoreWriter};
use crate::routing::{ConversationLookup, ConversationsUnavailable};
use crate::telemetry;

/// The conversation lists of one app in the store, as routing reads them.
pub struct StoredConversations {
    store: Store,
    /// Whose queue the read waits behind: a message delivered just before its archive is
    /// in the conversation the archive publishes.
    writer: StoreWriter,
    app: String,
    runtime: Handle,
}

impl StoredConversations {
    /// Reads `app`'s conversations from `store`; call it on the runtime that will serve the reads.
    pub fn new(store: Store, writer: StoreWriter, app: &str) -> StoredConversations {
        StoredConversations { store, writer, app: app.to_owned(), runtime: Handle::current() }
    }
}

impl ConversationLookup for StoredConversations {
    /// Blocks the calling thread (routing's worker, not an async task) at most three times
    /// [`MISS_READ_TIMEOUT`].
    fn get(&self, user: &str, conversation: &str) -> Result<Option<Map<String, Value>>, ConversationsUnavailable> {
        let Ok(written) = self.writer.submit(Vec::new()) else {
            telemetry::conversation_read_failed("the store writer stopped");
            return Err(ConversationsUnavailable);
        };
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        let (store, app, user, conversation) =
            (self.store.clone(), self.app.clone(), user.to_owned(), conversation.to_owned());
        self.runtime.spawn(async move {
            let read = async {
                // Not durable (refused, writer gone) still means committed or never will be.
                let _ = written.wait().await;
                let live = store.conversation(&app, &user, &conversation, false).await?;
                match live {
                    Some(live) => Ok(Some(live)),
                    None => store.conversation(&app, &user, &conversation, true).await,
                }
            };
            let _ = answer.send(tokio::time::timeout(MISS_READ_TIMEOUT * 2, read).await);
        });
        match answered.recv_timeout(MISS_READ_TIMEOUT * 3) {
            Ok(Ok(Ok(found))) => Ok(found.and_then(|doc| match doc {
                Value::Object(doc) => Some(doc),
                _ => None,
            })),
            Ok(Ok(Err(err))) => {
                telemetry::conversation_read_failed(&format!("{err:#}"));
                Err(ConversationsUnavailable)
            }
            Ok(Err(_)) | Err(_) => {
                telemetry::conversation_read_failed("no answer within the timeout");
                Err(ConversationsUnavailable)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::store::{StoreUrl, Write};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_archive_finds_the_live_or_archived_conversation() {
        let dir = tempfile::tempdir().unwrap();
        let url = StoreUrl::Sqlite(format!("sqlite://{}", dir.path().join("t.db").display()));
        let store = Store::open(&url).await.unwrap().unwrap();
        let message = Write::Message {
            inbox: "bob".into(),
            conversation: "alice".into(),
            message_id: "m1".into(),
            status: 150,
            sent_at: 1,
            body: json!({"text":"hi","sender":"alice"}).to_string().into(),
            conversation_update: Some(true),
        };
        store.apply("app", vec![message].into()).await.unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let (writer, writing) = StoreWriter::spawn(store.clone(), "app".into(), Arc::default(), stop.clone());
        let lists = Arc::new(StoredConversations::new(store.clone(), writer.clone(), "app"));
        let get = |user: &'static str, conversation: &'static str| {
            let lists = Arc::clone(&lists);
            tokio::task::spawn_blocking(move || lists.get(user, conversation))
        };
        let live = get("bob", "alice").await.unwrap().unwrap().unwrap();
        assert_eq!(
            (&live["text"], &live["conversWith"], &live["archived"]),
            (&json!("hi"), &json!("alice"), &json!(false))
        );
        let flag = Write::Conversation {
            inbox: "bob".into(),
            conversation: "alice".into(),
            is_new: None,
            archived: Some(true),
        };
        store.apply("app", vec![flag].into()).await.unwrap();
        assert_eq!(get("bob", "alice").await.unwrap().unwrap().unwrap()["archived"], true);
        assert!(get("bob", "nobody").await.unwrap().unwrap().is_none());
        // A message handed to the writer just before is in the conversation read.
        let later = Write::Message {
            inbox: "bob".into(),
            conversation: "alice".into(),
            message_id: "m2".into(),
            status: 150,
            sent_at: 2,
            body: json!({"text":"later"}).to_string().into(),
            conversation_update: Some(true),
        };
        let submitted = tokio::task::spawn_blocking(move || writer.submit(vec![later]).map(|_| ()));
        submitted.await.unwrap().unwrap();
        assert_eq!(get("bob", "alice").await.unwrap().unwrap().unwrap()["text"], "later");
        stop.cancel();
        writing.await.unwrap();
        assert_eq!(get("bob", "alice").await.unwrap(), Err(ConversationsUnavailable));
    }
}
