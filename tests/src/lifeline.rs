//! The watchdog that ties a private server (RabbitMQ node, PostgreSQL) to the test process.
//!
//! The server runs under a small `sh` watchdog ([`WATCHDOG`]) whose stdin is a pipe from the test
//! process. The watchdog blocks reading that pipe. End of file comes when the test process closes
//! its end (a clean stop, `Drop`) or when the kernel closes it because the test process exited,
//! panicked, aborted or was SIGKILLed; cargo test runs no static destructors, so the shared
//! servers rely on exactly that. The watchdog then sends the server its stop signal and SIGKILL
//! after a grace period. It runs in its own process group, so a Ctrl-C meant for cargo reaches
//! the server only through the lifeline.

use std::{os::unix::process::CommandExt, path::Path, process::Command, time::Duration};

/// The watchdog, run as `sh -c WATCHDOG watchdog SIGNAL GRACE_TENTHS CLEANUP_DIR SERVER...`.
///
/// It starts the server with fd 3 closed and stdin from /dev/null, and a reader subshell that
/// blocks on the lifeline (fd 3, a copy of the watchdog's stdin, since an asynchronous list gets
/// /dev/null as stdin). At end of file the reader sends SIGNAL to the server, which shuts down
/// cleanly; after the grace period it SIGKILLs the server's children and the server. The
/// watchdog itself waits for the server, so it exits when the server is gone, whatever the
/// reason; then, if the lifeline was cut and CLEANUP_DIR is not empty, it removes that directory.
const WATCHDOG: &str = r#"
sig=$1 grace=$2 cleanup=$3
shift 3
exec 3<&0 </dev/null
"$@" 3<&- &
srv=$!
(
    cat <&3 >/dev/null
    if [ -n "$cleanup" ]; then : >"$cleanup/.lifeline-cut"; fi
    kill -"$sig" "$srv"
    i=0
    while [ "$i" -lt "$grace" ]; do sleep 0.1; i=$((i + 1)); done
    kill -KILL $(cat "/proc/$srv/task/$srv/children") "$srv"
) 2>/dev/null &
reader=$!
exec 3<&-
wait "$srv"
kill "$reader" 2>/dev/null
if [ -n "$cleanup" ] && [ -e "$cleanup/.lifeline-cut" ]; then rm -rf -- "$cleanup"; fi
"#;

/// A `/bin/sh` running [`WATCHDOG`] in a process group of its own; append the server's program
/// and arguments, set its environment and output, give it a piped stdin (the lifeline) and spawn.
/// At end of the lifeline the server gets `stop_signal` (`TERM`, `INT`, ...), and SIGKILL
/// `grace` later; `cleanup`, if given, is removed once the server is gone.
pub(crate) fn watchdog(stop_signal: &str, grace: Duration, cleanup: Option<&Path>) -> Command {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(WATCHDOG)
        .arg("inboxd-e2e-watchdog")
        .arg(stop_signal)
        .arg((grace.as_millis() / 100).to_string())
        .arg(cleanup.map_or("".as_ref(), Path::as_os_str))
        .process_group(0);
    command
}
