//! What `inboxd plugin check` reports about a component: the world it targets, its exports,
//! and each import with whether the host provides it and whether it is granted.

use std::fmt;
use std::path::Path;

use anyhow::Context;
use wasmtime::component::Component;

use super::cache::sha256_hex;
use super::engine::Runtime;
use super::imports::{Access, CONTRACT_PACKAGE, CONTRACT_VERSION, Grant, classify};
use super::instance::REQUIRED_EXPORTS;

/// The facts about one component, as the host sees them.
#[derive(Debug)]
pub struct Inspection {
    /// Exports by name (functions of the world, or anything else the component exports).
    pub exports: Vec<String>,
    /// Imports by name, with how the host treats each.
    pub imports: Vec<(String, Access)>,
}

impl Inspection {
    /// Compiles the component in `file` (no cache) and inspects it.
    ///
    /// # Errors
    /// When the file cannot be read or is not a component.
    pub fn of_file(file: &Path, grants: &[Grant]) -> anyhow::Result<Inspection> {
        let wasm = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let runtime = Runtime::new(None, false)?;
        let (component, _) = runtime
            .compile(&sha256_hex(&wasm), &wasm)
            .with_context(|| format!("{} is not a valid WebAssembly component", file.display()))?;
        Ok(Inspection::of(&runtime, &component, grants))
    }

    /// Inspects a compiled component as a plugin with `grants` would be checked.
    pub fn of(runtime: &Runtime, component: &Component, grants: &[Grant]) -> Inspection {
        let ty = component.component_type();
        let engine = runtime.engine();
        let exports = ty.exports(engine).map(|(name, _)| name.to_owned()).collect();
        let imports = ty.imports(engine).map(|(name, _)| (name.to_owned(), classify(name, grants))).collect();
        Inspection { exports, imports }
    }

    /// The required exports this component lacks.
    pub fn missing_exports(&self) -> Vec<&'static str> {
        REQUIRED_EXPORTS.into_iter().filter(|e| !self.exports.iter().any(|x| x == e)).collect()
    }

    /// Whether the host would load it: all exports present, no refused import.
    pub fn loadable(&self) -> bool {
        self.missing_exports().is_empty() && self.imports.iter().all(|(_, access)| access.is_allowed())
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let missing = self.missing_exports();
        if missing.is_empty() {
            writeln!(f, "world: {CONTRACT_PACKAGE}/policy@{CONTRACT_VERSION} (init, on-message, on-deliver)")?;
        } else {
            writeln!(f, "world: not {CONTRACT_PACKAGE}/policy: missing export(s) {}", missing.join(", "))?;
        }
        writeln!(f, "exports:")?;
        for export in &self.exports {
            writeln!(f, "  {export}")?;
        }
        writeln!(f, "imports:")?;
        for (import, access) in &self.imports {
            let verdict = match access {
                Access::Contract => "provided (contract)".to_owned(),
                Access::Inert => "provided, inert (deny-by-default WASI)".to_owned(),
                Access::Stdio { granted: true } => "provided, granted `stdio`: output goes to the log".to_owned(),
                Access::Stdio { granted: false } => "provided, output discarded (grant `stdio` to log it)".to_owned(),
                Access::Refused(reason) => format!("REFUSED: {reason}"),
            };
            writeln!(f, "  {import}: {verdict}")?;
        }
        let verdict = if self.loadable() { "loadable" } else { "NOT loadable" };
        write!(f, "result: {verdict}")
    }
}
