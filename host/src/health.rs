//! Whether the daemon is ready (connected, consuming, plugin chain loaded), shared between the
//! broker session that sets it and `/readyz`; also tells systemd once, when first ready.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::warn;

/// Readiness, cheap to clone and to read.
#[derive(Debug, Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
    notified: Arc<AtomicBool>,
}

impl Health {
    /// Consuming with the chain loaded; the first time, systemd learns it too (`Type=notify`).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
        if !self.notified.swap(true, Ordering::AcqRel) {
            notify_systemd();
        }
    }

    /// The broker session ended: not ready until the next one consumes.
    pub fn set_not_ready(&self) {
        self.ready.store(false, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Sends `READY=1` to `$NOTIFY_SOCKET` when systemd started us as `Type=notify`.
fn notify_systemd() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket: systemd writes it with a leading `@`.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(b"READY=1", &address)
            }
            None => socket.send_to(b"READY=1", &path),
        }
    });
    if let Err(err) = sent {
        warn!(error = %err, "could not notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_session_and_systemd_hears_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        // SAFETY: this test is the only one in the crate touching NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        let health = Health::default();
        assert!(!health.is_ready());
        health.set_ready();
        health.set_not_ready();
        assert!(!health.is_ready());
        health.set_ready();
        assert!(health.is_ready());
        let mut buf = [0u8; 16];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(listener.recv(&mut buf).is_err(), "notified twice");
    }
}
