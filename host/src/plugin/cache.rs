//! The on-disk compile cache: `<sha256 of the wasm>-<engine fingerprint>.cwasm`, where the
//! fingerprint covers the wasmtime version and every engine setting that affects code.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a compiled component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from the cache: no compilation.
    Hit,
    /// Compiled now and written to the cache.
    Miss,
    /// Compiled now; no cache is configured.
    Disabled,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Disabled => "disabled",
        }
    }
}

/// A directory of precompiled components for one engine configuration.
///
/// Loading a `.cwasm` maps native code into the process, so anyone who can write to this
/// directory can run code as inboxd: it is created owner-only, and must stay private.
#[derive(Debug)]
pub struct CompileCache {
    dir: PathBuf,
    fingerprint: String,
}

impl CompileCache {
    /// Opens (creating it owner-only if needed) the cache directory for `engine`.
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn open(dir: &Path, engine: &Engine) -> anyhow::Result<CompileCache> {
        fs::create_dir_all(dir).with_context(|| format!("creating the plugin cache {}", dir.display()))?;
        restrict(dir).with_context(|| format!("restricting the plugin cache {} to its owner", dir.display()))?;
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let fingerprint = hex(&hasher.0.finalize()[..8]);
        Ok(CompileCache { dir: dir.to_owned(), fingerprint })
    }

    /// Loads the component of the wasm whose sha256 is `digest`, compiling it with `precompile`
    /// (which writes the code where it is told) on a miss. The code is written here and mapped
    /// from the file, so it is never held on the heap.
    ///
    /// A cache entry that does not load (corrupt, or from another build) is recompiled
    /// and replaced.
    ///
    /// # Errors
    /// When the wasm does not compile, or the code cannot be written here.
    pub fn load(
        &self,
        engine: &Engine,
        digest: &str,
        precompile: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
    ) -> anyhow::Result<(Component, CacheOutcome)> {
        let path = self.dir.join(format!("{digest}-{}.cwasm", self.fingerprint));
        if path.exists() {
            // SAFETY: the file was written from `precompile_component` of an engine with the same
            // fingerprint, in a directory only this user can write (see the type's docs);
            // wasmtime also checks the version and settings recorded in the file.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(err) => tracing::warn!(path = %path.display(), error = %err, "unusable cache entry, recompiling"),
            }
        }
        self.store(&path, precompile)?;
        // SAFETY: as above: this process has just written it, from this build's compiler.
        Ok((unsafe { Component::deserialize_file(engine, &path) }?, CacheOutcome::Miss))
    }

    /// Has `precompile` write the entry at `path`, atomically: a reader never sees a
    /// half-written entry.
    fn store(&self, path: &Path, precompile: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let (tmp, file) = tempfile_in(&self.dir)
            .with_context(|| format!("creating an entry in the plugin cache {}", self.dir.display()))?;
        let mut out = std::io::BufWriter::new(file);
        let written = precompile(&mut out).and_then(|()| {
            let kept = out.into_inner().map_err(std::io::IntoInnerError::into_error).and_then(|file| {
                file.sync_all()?;
                fs::rename(&tmp, path)
            });
            kept.with_context(|| format!("writing {}", path.display()))
        });
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }
}

/// Lower-case hex of a digest.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds `Hash` output into sha256, so the fingerprint is stable across Rust releases.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        unreachable!("only the sha256 digest is read")
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, fs::File)> {
    let path = dir.join(format!(".tmp-{}-{}", std::process::id(), uuid::Uuid::new_v4()));
    let file = fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
    Ok((path, file))
}

#[cfg(unix)]
fn restrict(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn restrict(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}
