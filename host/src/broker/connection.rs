//! Opening the AMQP connection, failing over along the configured broker nodes. What to do
//! after a lost connection (and how fast to retry) is the daemon's business, not this module's.

use std::time::Duration;

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use thiserror::Error;
use tracing::{info, warn};

/// How long one node gets to accept the connection and the login before the next is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// No node of the list took the connection; names the last one tried (without credentials).
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("no broker node reachable; last tried {node}: {source}")]
    Refused { node: String, source: lapin::Error },
    #[error("no broker node reachable; last tried {node}: no answer within {CONNECT_TIMEOUT:?}")]
    TimedOut { node: String },
}

/// The largest AMQP frame inboxd proposes, unless the URL sets `frame_max`. lapin keeps a
/// zero-filled buffer of 32 frames each way per connection: with RabbitMQ's 128 KiB that was
/// 8 MiB resident, for chat messages of a few hundred bytes (a larger body takes several frames).
const FRAME_MAX: u32 = 16 * 1024;

/// Connects to `url`, naming the connection so operators can find it in the management UI.
///
/// # Errors
/// The lapin error when the URL does not parse, the broker is unreachable or refuses the login.
async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let mut uri: AMQPUri = url.parse().map_err(|e: String| lapin::Error::from(std::io::Error::other(e)))?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    Connection::connect_uri(uri, properties).await
}

/// The broker nodes of a cluster (or one node), tried in turn: the first connection starts at
/// the first node of the list, a reconnect at the node that worked last, and each attempt moves
/// on to the next node when one fails, so a stopped node is skipped. Processes that should use
/// different nodes get the list in different orders.
#[derive(Debug, Clone)]
pub struct Failover {
    urls: Vec<String>,
    next: usize,
}

impl Failover {
    /// # Panics
    /// When `urls` is empty (the config refuses an empty list).
    pub fn new(urls: &[String]) -> Failover {
        assert!(!urls.is_empty(), "at least one broker URL");
        Failover { urls: urls.to_vec(), next: 0 }
    }

    /// Connects to the first node of the list, from the current one on, that takes the connection.
    ///
    /// # Errors
    /// A [`ConnectError`] for the last node when none of them answered.
    pub async fn connect(&mut self, name: &str) -> Result<Connection, ConnectError> {
        let mut last = None;
        for step in 0..self.urls.len() {
            let index = (self.next + step) % self.urls.len();
            let url = &self.urls[index];
            let node = node_of(url);
            let error = match tokio::time::timeout(CONNECT_TIMEOUT, connect(url, name)).await {
                Ok(Ok(connection)) => {
                    if last.is_some() {
                        info!(node = %node, "connected to another broker node");
                    }
                    self.next = index;
                    return Ok(connection);
                }
                Ok(Err(source)) => ConnectError::Refused { node, source },
                Err(_) => ConnectError::TimedOut { node },
            };
            if self.urls.len() > 1 {
                warn!(error = %error, "broker node unreachable, trying the next");
            }
            last = Some(error);
        }
        self.next = (self.next + 1) % self.urls.len();
        Err(last.expect("the list is not empty"))
    }
}

/// `scheme://host:port/vhost` of an AMQP URI, without the credentials, for logs.
pub fn node_of(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{rest}")
        }
        None => "(not a URI)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_drop_credentials() {
        assert_eq!(node_of("amqp://observer:secret@10.0.0.1:5672/%2f"), "amqp://10.0.0.1:5672/%2f");
        assert_eq!(node_of("amqps://rabbit"), "amqps://rabbit");
        assert_eq!(node_of("rabbit"), "(not a URI)");
    }

    /// Two closed local ports, then nothing else: every node is tried once, the error names
    /// the last, and the next attempt starts one node further on.
    #[tokio::test]
    async fn every_node_is_tried_in_turn() {
        let closed = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            format!("amqp://u:p@127.0.0.1:{port}/%2f")
        };
        let urls = vec![closed(), closed()];
        let mut failover = Failover::new(&urls);
        let err = failover.connect("test").await.unwrap_err();
        assert!(err.to_string().contains(&node_of(&urls[1])), "{err}");
        assert!(!err.to_string().contains("u:p"), "{err}");
        assert_eq!(failover.next, 1);
        let err = failover.connect("test").await.unwrap_err();
        assert!(err.to_string().contains(&node_of(&urls[0])), "{err}");
    }
}
