//! The channels of one broker session, closed before its connection: lapin closes a dropped
//! channel later, and one still closing when the connection closes is logged as an error.

use std::time::Duration;

use futures_util::future::join_all;
use lapin::Channel;
use tracing::{debug, warn};

/// Clones of a session's channels. Holding one keeps its channel from closing itself on drop
/// (lapin closes a channel when its last clone goes), so the session closes them first.
#[derive(Default)]
pub struct OpenChannels(Vec<Channel>);

impl OpenChannels {
    /// Keeps `channel` to close with the session (once, however often it is added).
    pub fn add(&mut self, channel: &Channel) {
        if !self.0.iter().any(|kept| kept.id() == channel.id()) {
            self.0.push(channel.clone());
        }
    }

    /// Closes every channel still open, all at once, waiting at most `timeout` for the broker's
    /// answers; a channel the broker or the connection already closed is left as it is.
    pub async fn close(self, timeout: Duration) {
        let closing = self.0.iter().filter(|channel| channel.status().connected()).map(|channel| async move {
            if let Err(err) = channel.close(200, "inboxd session ends".into()).await {
                debug!(channel = channel.id(), error = %err, "closing the channel");
            }
        });
        if tokio::time::timeout(timeout, join_all(closing)).await.is_err() {
            warn!(timeout_ms = timeout.as_millis() as u64, "closing the session's channels timed out");
        }
    }
}
