//! The crate's layering, enforced: every top-level module of `host/src` imports only modules of
//! the layers below its own (the map is `lib.rs`'s "# Layers"), so the import graph has no cycle.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Bottom to top. A module may name (`crate::<module>`) only modules of earlier rows.
const LAYERS: &[&[&str]] = &[
    &["clock", "health", "refusals", "settings", "telemetry"],
    &["chat21"],
    &["policy", "token"],
    &["plugin", "routing"],
    &["broker", "store"],
    &["import", "webhook"],
    &["pipeline"],
    &["held", "http"],
    &["console", "history"],
    &["config"],
    &["daemon"],
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The library's top-level modules (`pub mod x;` in lib.rs).
fn modules() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("reading lib.rs");
    lib.lines().filter_map(|line| line.trim().strip_prefix("pub mod ")?.strip_suffix(';').map(str::to_owned)).collect()
}

/// The Rust files of one top-level module (`x.rs`, or everything under `x/`).
fn files(module: &str) -> Vec<PathBuf> {
    let file = src().join(format!("{module}.rs"));
    if file.is_file() {
        return vec![file];
    }
    let mut found = Vec::new();
    let mut dirs = vec![src().join(module)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    found
}

/// The top-level modules a piece of code names through `crate::` (comments and the unit tests
/// at the bottom of a file excluded), including the grouped form `crate::{a::X, b}`.
fn imported(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut names = BTreeSet::new();
    let lines = code.lines().take_while(|l| l.trim() != "#[cfg(test)]");
    for line in lines.filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 0;
                let mut start = true;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => start = true,
                        c if start && !c.is_whitespace() => {
                            names.insert(ident(&group[i..]));
                            start = false;
                        }
                        _ => {}
                    }
                }
            } else {
                names.insert(ident(rest));
            }
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

#[test]
fn every_module_has_a_layer() {
    let missing: Vec<_> = modules().into_iter().filter(|m| layer_of(m).is_none()).collect();
    assert!(missing.is_empty(), "modules with no place in LAYERS (host/tests/layers.rs): {missing:?}");
}

#[test]
fn imports_point_down() {
    let mut upward = Vec::new();
    for module in modules() {
        let Some(own) = layer_of(&module) else { continue };
        for file in files(&module) {
            let code = std::fs::read_to_string(&file).expect("reading a source file");
            for name in imported(&code) {
                match layer_of(&name) {
                    Some(layer) if layer < own || name == module => {}
                    _ => upward.push(format!("{} imports crate::{name}", file.strip_prefix(src()).unwrap().display())),
                }
            }
        }
    }
    assert!(upward.is_empty(), "imports that do not point down a layer:\n{}", upward.join("\n"));
}

#[test]
fn the_scanner_sees_grouped_and_nested_imports() {
    let code = "use crate::{broker::{self, X}, chat21};\n// crate::daemon\nlet x = crate::store::open();";
    let names: Vec<_> = imported(code).into_iter().collect();
    assert_eq!(names, ["broker", "chat21", "store"]);
}
