//! Where `plugins/build.sh` (the `rust-*` examples) and `plugins/build-languages.sh` (the
//! `*-keyword` filters in JavaScript, Python and C) put the built components. The one copy of
//! this lookup: the host's tests and benchmarks and the e2e harness include this file with
//! `#[path]` (from a crate one level below the workspace root).
#![allow(dead_code)] // each includer uses a part

use std::path::{Path, PathBuf};

/// Set to a directory of built components to use those instead of `target/plugins`.
pub const BUILT_PLUGINS_ENV: &str = "INBOXD_TEST_PLUGINS";

/// [`BUILT_PLUGINS_ENV`], else `<workspace>/target/plugins`.
pub fn built_plugins_dir() -> PathBuf {
    std::env::var_os(BUILT_PLUGINS_ENV)
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"), PathBuf::from)
}

/// The script that builds example plugin `name`.
pub fn build_script(name: &str) -> &'static str {
    if name.starts_with("rust-") { "./plugins/build.sh" } else { "./plugins/build-languages.sh" }
}

/// The built example plugin `name` (without `.wasm`).
///
/// # Panics
///
/// When it has not been built, with a message that names the script to run first.
pub fn built_plugin(name: &str) -> PathBuf {
    let file = built_plugins_dir().join(format!("{name}.wasm"));
    assert!(
        file.exists(),
        "setup failed: {} is missing: run {} first (or set {BUILT_PLUGINS_ENV} to a directory of built plugins)",
        file.display(),
        build_script(name)
    );
    file
}
