//! Which imports a plugin component may have: the contract, the inert part of WASI 0.2 that
//! default toolchains import, and what the operator granted. Everything else is refused at load.

use std::fmt;
use std::str::FromStr;

/// The contract package plugins are written against; any 0.1.x version is accepted.
pub const CONTRACT_PACKAGE: &str = "inboxd:policy";
/// The contract version this host implements.
pub const CONTRACT_VERSION: &str = "0.1.0";

/// WASI 0.2 interfaces linked with a deny-by-default context: no preopened directories, no
/// environment, no arguments, closed stdin, all network denied, clocks that never sleep.
/// Default Rust, C (adapter) and Python builds import these even when the code never uses them.
const INERT_WASI: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/ip-name-lookup",
];

/// Guest output streams: linked always; what is written reaches the log only with [`Grant::Stdio`].
const STDIO_WASI: &[&str] = &["wasi:cli/stdout", "wasi:cli/stderr"];

/// A capability the operator can grant a plugin in `grants = [...]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grant {
    /// The plugin's stdout and stderr go to the host's log (info and warn), under its name.
    Stdio,
}

impl Grant {
    /// Every grant this host implements, for error messages.
    pub const ALL: &'static [&'static str] = &["stdio"];
}

impl FromStr for Grant {
    type Err = String;

    fn from_str(name: &str) -> Result<Grant, String> {
        match name {
            "stdio" => Ok(Grant::Stdio),
            _ => Err(format!("grant `{name}` is not implemented; known grants: {}", Grant::ALL.join(", "))),
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Stdio => f.write_str("stdio"),
        }
    }
}

/// How the host treats one import of a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Part of the `inboxd:policy` contract.
    Contract,
    /// WASI satisfied by the deny-by-default context: the plugin gains nothing from it.
    Inert,
    /// Guest output: linked; reaches the log only if `stdio` is granted (else it is discarded).
    Stdio { granted: bool },
    /// Not provided: a component with this import is refused, for this reason.
    Refused(String),
}

impl Access {
    /// Whether a component with this import may load.
    pub fn is_allowed(&self) -> bool {
        !matches!(self, Access::Refused(_))
    }
}

/// Classifies an import name such as `wasi:cli/stdout@0.2.6` for a plugin with `grants`.
pub fn classify(import: &str, grants: &[Grant]) -> Access {
    let (name, version) = import.split_once('@').unwrap_or((import, ""));
    if let Some(rest) = name.strip_prefix(CONTRACT_PACKAGE).and_then(|r| r.strip_prefix('/')) {
        return if version.starts_with("0.1.") && ["types", "log", "clock", "counters", "metrics"].contains(&rest) {
            Access::Contract
        } else {
            Access::Refused(format!("this host implements {CONTRACT_PACKAGE}@{CONTRACT_VERSION}"))
        };
    }
    let wasi_02 = name.starts_with("wasi:") && version.starts_with("0.2.");
    if wasi_02 && INERT_WASI.contains(&name) {
        return Access::Inert;
    }
    if wasi_02 && STDIO_WASI.contains(&name) {
        return Access::Stdio { granted: grants.contains(&Grant::Stdio) };
    }
    let reason = if name.starts_with("wasi:http") || name.starts_with("wasi:sockets") {
        "plugins get no network access".to_owned()
    } else if name.starts_with("wasi:") {
        "this WASI interface or version is not provided to plugins (only the inert parts of WASI 0.2)".to_owned()
    } else {
        format!("plugins may import only {CONTRACT_PACKAGE}@0.1.x and the inert parts of WASI 0.2")
    };
    Access::Refused(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_and_inert_wasi_load_network_does_not() {
        assert_eq!(classify("inboxd:policy/counters@0.1.0", &[]), Access::Contract);
        assert!(!classify("inboxd:policy/counters@0.2.0", &[]).is_allowed());
        assert!(!classify("inboxd:policy/files@0.1.0", &[]).is_allowed());
        assert_eq!(classify("wasi:io/streams@0.2.6", &[]), Access::Inert);
        assert_eq!(classify("wasi:sockets/tcp@0.2.9", &[]), Access::Inert);
        assert!(!classify("wasi:http/types@0.2.10", &[]).is_allowed());
        assert!(!classify("wasi:http/outgoing-handler@0.2.10", &[]).is_allowed());
        assert!(!classify("wasi:io/streams@0.3.0", &[]).is_allowed());
        assert!(!classify("acme:evil/thing", &[]).is_allowed());
    }

    #[test]
    fn stdio_is_linked_either_way_and_granted_on_request() {
        assert_eq!(classify("wasi:cli/stderr@0.2.6", &[]), Access::Stdio { granted: false });
        assert_eq!(classify("wasi:cli/stdout@0.2.6", &[Grant::Stdio]), Access::Stdio { granted: true });
        assert_eq!("stdio".parse::<Grant>(), Ok(Grant::Stdio));
        assert!("network".parse::<Grant>().unwrap_err().contains("not implemented"));
    }
}
