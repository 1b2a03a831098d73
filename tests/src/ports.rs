//! Loopback ports for the private servers and daemons of one test process. Each is handed out
//! once: a node restarted on its ports (they are free while it is down) never finds one taken by
//! another test's server that happened to pick it meanwhile.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{LazyLock, Mutex, PoisonError};

use anyhow::{Context, Result};

/// Every port handed out so far in this process.
static HANDED_OUT: LazyLock<Mutex<HashSet<u16>>> = LazyLock::new(Mutex::default);

/// `n` distinct free ports on 127.0.0.1 that no other caller in this process got before.
///
/// # Errors
/// When binding port 0 fails.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    // All held at once while picking, so the kernel hands out distinct ones.
    let mut held = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0 to pick a port")?;
        let port = listener.local_addr().context("reading a picked port")?.port();
        if handed_out.insert(port) {
            ports.push(port);
        }
        held.push(listener);
    }
    Ok(ports)
}

/// One free port, as [`free_ports`].
///
/// # Errors
/// When binding port 0 fails.
pub fn free_port() -> Result<u16> {
    Ok(free_ports(1)?[0])
}
