//! Where plugins are compiled to native code: in this process, or in a child process running
//! this executable's `plugin precompile`, so that Cranelift's memory never joins the daemon's.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The hidden subcommand a [`Compiler::Child`] runs: wasm on stdin, compiled code on stdout.
pub const PRECOMPILE_ARGS: [&str; 2] = ["plugin", "precompile"];

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
    /// `wasm` compiled for `engine` (made by [`engine`](super::engine::engine) with `fuel`), as
    /// [`Engine::precompile_component`] serializes it.
    ///
    /// # Errors
    /// When `wasm` is not a valid component (with the compiler's message), or the child cannot
    /// be run.
    pub fn precompile(&self, engine: &Engine, fuel: bool, wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
        match self {
            Compiler::InProcess => engine.precompile_component(wasm).map_err(anyhow::Error::from),
            Compiler::Child(executable) => in_child(executable, fuel, wasm),
        }
    }
}

fn in_child(executable: &PathBuf, fuel: bool, wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new(executable)
        .args(PRECOMPILE_ARGS)
        .args(fuel.then_some("--fuel"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting the plugin compiler {}", executable.display()))?;
    // A child that fails before reading all of it closes the pipe; its status and stderr say why.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(wasm);
    }
    let output = child.wait_with_output().context("waiting for the plugin compiler")?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let message = stderr.trim().strip_prefix("inboxd: ").unwrap_or(stderr.trim());
    match output.status.code() {
        Some(_) if !message.is_empty() => bail!("{message}"),
        _ => bail!("the plugin compiler {} failed: {}", executable.display(), output.status),
    }
}

/// The component in `bytes`, as [`Compiler::precompile`] returned it for `engine`.
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
    fn child(dir: &tempfile::TempDir, then: &str) -> Compiler {
        let path = dir.path().join("compiler");
        std::fs::write(&path, format!("#!/bin/sh\ncat > /dev/null\n{then}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        Compiler::Child(path)
    }

    #[test]
    fn a_child_that_cannot_compile_is_reported_in_its_own_words() {
        let engine = super::super::engine::engine(false).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let refuses = child(&dir, "echo 'inboxd: not a component: bad magic' >&2; exit 1");
        let err = refuses.precompile(&engine, false, b"garbage").unwrap_err();
        assert_eq!(format!("{err:#}"), "not a component: bad magic");
        let killed = child(&dir, "kill -9 $$");
        let err = killed.precompile(&engine, false, b"garbage").unwrap_err();
        assert!(format!("{err:#}").contains("failed: signal: 9"), "{err:#}");
        let missing = Compiler::Child(dir.path().join("nonexistent"));
        let err = missing.precompile(&engine, false, b"garbage").unwrap_err();
        assert!(format!("{err:#}").starts_with("starting the plugin compiler"), "{err:#}");
    }

    #[test]
    fn what_a_child_writes_is_loaded_as_the_component_it_compiled() {
        let engine = super::super::engine::engine(false).unwrap();
        let wasm = wat::parse_str("(component)").unwrap();
        let compiled = Compiler::InProcess.precompile(&engine, false, &wasm).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bytes = dir.path().join("compiled");
        std::fs::write(&bytes, &compiled).unwrap();
        let echoes = child(&dir, &format!("cat {}", bytes.display()));
        let component = load(&engine, &echoes.precompile(&engine, false, &wasm).unwrap()).unwrap();
        assert_eq!(component.component_type().exports(&engine).count(), 0);
        let other = super::super::engine::engine(true).unwrap();
        assert!(load(&other, &compiled).is_err(), "code compiled for another engine configuration loads");
    }
}
