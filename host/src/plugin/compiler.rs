//! Where plugins are compiled to native code: in this process, or in a child process running
//! this executable's `plugin precompile`, so that Cranelift's memory never joins the daemon's.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The hidden subcommand a [`Compiler::Child`] runs: wasm on stdin, compiled code on stdout.
const PRECOMPILE_ARGS: [&str; 2] = ["plugin", "precompile"];

/// How long a child may compile one plugin before it is killed. The example JavaScript plugin
/// (12 MB of wasm) compiles in ~7 s on 2 cores: far longer is a compiler that never ends, and a
/// reload that would wait for it for good.
const TIME_LIMIT: Duration = Duration::from_secs(600);

/// How a miss in the compile cache is compiled.
#[derive(Clone, Debug, Default)]
pub enum Compiler {
    /// Here, on the calling thread. For tools and tests that run briefly.
    #[default]
    InProcess,
    /// By `<executable> plugin precompile`, which must be this same build of inboxd (the
    /// daemon passes its own executable). Compiling a plugin takes tens of MiB (hundreds for a
    /// JavaScript or Python one) and pages in the compiler's code; in the daemon that memory
    /// stayed resident for good: 14–20 MiB more for the example chain at the preset.
    Child(PathBuf),
}

impl Compiler {
    /// Writes `wasm` compiled for `engine` (made by [`engine`](super::engine::engine) with
    /// `fuel`) to `out`, as [`Engine::precompile_component`] serializes it. A child's code goes
    /// to `out` as it comes, without being held in this process.
    ///
    /// # Errors
    /// When `wasm` is not a valid component (with the compiler's message), the child cannot be
    /// run, or `out` cannot be written.
    pub fn precompile(&self, engine: &Engine, fuel: bool, wasm: &[u8], out: &mut dyn Write) -> anyhow::Result<()> {
        match self {
            Compiler::InProcess => {
                let code = engine.precompile_component(wasm)?;
                out.write_all(&code).context("writing the compiled code")
            }
            Compiler::Child(executable) => in_child(executable, fuel, wasm, out, TIME_LIMIT),
        }
    }
}

/// Compiles in a child, killed once it has run for `limit`.
fn in_child(executable: &Path, fuel: bool, wasm: &[u8], out: &mut dyn Write, limit: Duration) -> anyhow::Result<()> {
    let mut child = Command::new(executable)
        .args(PRECOMPILE_ARGS)
        .args(fuel.then_some("--fuel"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting the plugin compiler {}", executable.display()))?;
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let pid = libc::pid_t::try_from(child.id()).context("the plugin compiler's process id")?;
    let (finished, finishing) = mpsc::channel::<()>();
    let (copied, message, overran) = std::thread::scope(|scope| {
        let watchdog = scope.spawn(move || {
            let overran = finishing.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout);
            if overran {
                // SAFETY: sends a signal. The child is not waited for yet, so `pid` is still its
                // own (a zombie keeps it); its pipes then close and the reads below end.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            overran
        });
        scope.spawn(move || {
            // A child that fails before reading all of it closes the pipe; its status and
            // stderr say why.
            if let Some(mut stdin) = stdin {
                let _ = stdin.write_all(wasm);
            }
        });
        let message = scope.spawn(move || {
            let mut text = String::new();
            if let Some(mut stderr) = stderr {
                let _ = stderr.read_to_string(&mut text);
            }
            text
        });
        // If `out` fails, the pipe closes here and the child's next write fails: it ends.
        let copied = stdout.map_or(Ok(0), |mut stdout| std::io::copy(&mut stdout, out));
        let message = message.join().unwrap_or_default();
        drop(finished);
        (copied, message, watchdog.join().unwrap_or(false))
    });
    let status = child.wait().context("waiting for the plugin compiler")?;
    if overran {
        bail!("the plugin compiler ran longer than {} s and was stopped", limit.as_secs_f64());
    }
    copied.context("writing the compiled code")?;
    if status.success() {
        return Ok(());
    }
    let message = message.trim();
    match message.strip_prefix("inboxd: ").unwrap_or(message) {
        "" => bail!("the plugin compiler {} failed: {status}", executable.display()),
        said => bail!("{said}"),
    }
}

/// The component in `bytes`, as [`Compiler::precompile`] wrote it for `engine`.
///
/// # Errors
/// When the bytes were made by another build or engine configuration.
pub fn load(engine: &Engine, bytes: &[u8]) -> anyhow::Result<Component> {
    // SAFETY: `bytes` come from `precompile_component` of this build, for an engine of the same
    // settings (this process's, or the child's running this same executable); wasmtime checks
    // the version and settings recorded in them as well.
    unsafe { Component::deserialize(engine, bytes) }.map_err(anyhow::Error::from)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A stand-in for the child: a shell script reading its input, then running `then`.
    fn script(dir: &tempfile::TempDir, then: &str) -> PathBuf {
        let path = dir.path().join("compiler");
        std::fs::write(&path, format!("#!/bin/sh\ncat > /dev/null\n{then}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        path
    }

    fn child(dir: &tempfile::TempDir, then: &str) -> Compiler {
        Compiler::Child(script(dir, then))
    }

    #[test]
    fn a_child_that_cannot_compile_is_reported_in_its_own_words() {
        let engine = super::super::engine::engine(false).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let refuses = child(&dir, "echo 'inboxd: not a component: bad magic' >&2; exit 1");
        let err = refuses.precompile(&engine, false, b"garbage", &mut Vec::new()).unwrap_err();
        assert_eq!(format!("{err:#}"), "not a component: bad magic");
        let killed = child(&dir, "kill -9 $$");
        let err = killed.precompile(&engine, false, b"garbage", &mut Vec::new()).unwrap_err();
        assert!(format!("{err:#}").contains("failed: signal: 9"), "{err:#}");
        let missing = Compiler::Child(dir.path().join("nonexistent"));
        let err = missing.precompile(&engine, false, b"garbage", &mut Vec::new()).unwrap_err();
        assert!(format!("{err:#}").starts_with("starting the plugin compiler"), "{err:#}");
    }

    #[test]
    fn a_child_that_compiles_for_too_long_is_stopped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        // `exec`: the process killed is the one holding the pipes.
        let hangs = script(&dir, "exec sleep 600");
        let limit = Duration::from_millis(200);
        let err = in_child(&hangs, false, b"wasm", &mut Vec::new(), limit).unwrap_err();
        assert_eq!(format!("{err:#}"), "the plugin compiler ran longer than 0.2 s and was stopped");
    }

    /// Output that cannot be written, as on a full disk.
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("no space left"))
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_that_cannot_be_written_ends_the_child_and_is_what_is_reported() {
        let engine = super::super::engine::engine(false).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Far more than a pipe holds: the child would block for good if nobody read on.
        let floods = child(&dir, "head -c 50000000 /dev/zero");
        let err = floods.precompile(&engine, false, b"wasm", &mut Full).unwrap_err();
        assert_eq!(format!("{err:#}"), "writing the compiled code: no space left");
    }

    #[test]
    fn what_a_child_writes_is_loaded_as_the_component_it_compiled() {
        let engine = super::super::engine::engine(false).unwrap();
        let wasm = wat::parse_str("(component)").unwrap();
        let mut compiled = Vec::new();
        Compiler::InProcess.precompile(&engine, false, &wasm, &mut compiled).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bytes = dir.path().join("compiled");
        std::fs::write(&bytes, &compiled).unwrap();
        let echoes = child(&dir, &format!("cat {}", bytes.display()));
        let mut echoed = Vec::new();
        echoes.precompile(&engine, false, &wasm, &mut echoed).unwrap();
        let component = load(&engine, &echoed).unwrap();
        assert_eq!(component.component_type().exports(&engine).count(), 0);
        let other = super::super::engine::engine(true).unwrap();
        assert!(load(&other, &compiled).is_err(), "code compiled for another engine configuration loads");
    }
}
