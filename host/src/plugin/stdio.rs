//! Guest stdout and stderr as lines in the host's log under the plugin's name (the `stdio`
//! grant). Without the grant the WASI context's default sink discards what a plugin writes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line logged; the rest of a longer line is cut.
pub const MAX_LINE_BYTES: usize = 1024;

/// Which guest stream a [`LogStream`] stands for.
#[derive(Debug, Clone, Copy)]
pub enum Stdio {
    Stdout,
    Stderr,
}

/// A WASI output stream that writes each line into tracing (stdout at `info`, stderr at `warn`).
#[derive(Debug, Clone)]
pub struct LogStream {
    plugin: Arc<str>,
    stdio: Stdio,
}

impl LogStream {
    pub fn new(plugin: Arc<str>, stdio: Stdio) -> LogStream {
        LogStream { plugin, stdio }
    }

    fn writer(&self) -> LineWriter {
        LineWriter { plugin: Arc::clone(&self.plugin), stdio: self.stdio, pending: Vec::new() }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.writer())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.writer())
    }
}

/// Buffers a partial line until its newline (or until it is too long to wait for).
struct LineWriter {
    plugin: Arc<str>,
    stdio: Stdio,
    pending: Vec<u8>,
}

impl LineWriter {
    fn push(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                self.emit();
            } else if self.pending.len() < MAX_LINE_BYTES {
                self.pending.push(byte);
            }
        }
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.pending);
        let line = line.trim_end_matches('\r');
        match self.stdio {
            Stdio::Stdout => tracing::info!(plugin = %self.plugin, stream = "stdout", "{line}"),
            Stdio::Stderr => tracing::warn!(plugin = %self.plugin, stream = "stderr", "{line}"),
        }
        self.pending.clear();
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LineWriter {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
