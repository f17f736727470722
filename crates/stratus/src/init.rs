//! `stratus init --template NAME [DIR]`: scaffolds a function folder whose `stratus.toml` has the
//! `[build] command` that makes its component, so `stratus deploy` works right away.
//!
//! The templates are the bundled `examples/wasm-*` folders, compiled into the binary: what `init`
//! writes is exactly what the examples (and their tests) exercise.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::ValueEnum;
use stratus_core::FunctionName;

use crate::client::InvalidInput;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
// The variants are the CLI names (`--template js-wasm`), so the shared suffix is the point.
#[allow(clippy::enum_variant_names)]
pub enum Template {
    /// JavaScript, built with npm's @bytecodealliance/componentize-js.
    JsWasm,
    /// Python, built with PyPI's componentize-py.
    PythonWasm,
    /// Rust, built with cargo for wasm32-wasip2.
    RustWasm,
}

macro_rules! files {
    ($dir:literal: $($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../../examples/", $dir, "/", $path)))),*]
    };
}

/// The WIT the JS and Python guests are built against (the same files in both examples).
const WIT_FILES: &[(&str, &str)] = files!("wasm-js":
    "wit/world.wit",
    "wit/deps/wasi-cli/package.wit",
    "wit/deps/wasi-clocks/package.wit",
    "wit/deps/wasi-filesystem/package.wit",
    "wit/deps/wasi-http/package.wit",
    "wit/deps/wasi-io/package.wit",
    "wit/deps/wasi-random/package.wit",
    "wit/deps/wasi-sockets/package.wit",
);

impl Template {
    fn example(self) -> &'static str {
        match self {
            Template::JsWasm => "wasm-js",
            Template::PythonWasm => "wasm-python",
            Template::RustWasm => "wasm-rust",
        }
    }

    fn files(self) -> Vec<(&'static str, &'static str)> {
        let own: &[(&str, &str)] = match self {
            Template::JsWasm => files!("wasm-js":
                "stratus.toml", "package.json", "build.mjs", "app.js", ".gitignore", ".stratusignore"),
            Template::PythonWasm => files!("wasm-python":
                "stratus.toml", "app.py", ".gitignore", ".stratusignore"),
            Template::RustWasm => files!("wasm-rust":
                "stratus.toml", "Cargo.toml", "src/lib.rs", ".gitignore", ".stratusignore"),
        };
        let wit: &[(&str, &str)] = match self {
            Template::JsWasm | Template::PythonWasm => WIT_FILES,
            Template::RustWasm => &[],
        };
        own.iter().chain(wit).copied().collect()
    }

    fn next_steps(self) -> &'static str {
        match self {
            Template::JsWasm => "needs Node.js and npm (the build installs componentize-js)",
            Template::PythonWasm => "needs componentize-py: pip install componentize-py",
            Template::RustWasm => "needs the wasm32-wasip2 target: rustup target add wasm32-wasip2",
        }
    }
}

/// The function name for a folder: its name, lowercased, with anything else than a-z, 0-9, `-`
/// and `_` turned into `-`.
fn name_for(dir: &Path) -> String {
    let base = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let name: String = base
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches('-').to_string();
    if name.is_empty() {
        "hello".into()
    } else {
        name
    }
}

/// Writes the template into `dir` (created if missing). Refuses to overwrite any file.
pub fn run(template: Template, dir: &Path, name: Option<String>) -> Result<PathBuf> {
    let name = name.unwrap_or_else(|| name_for(dir));
    FunctionName::new(name.clone()).map_err(|e| {
        InvalidInput(format!(
            "cannot name the function `{name}`: {e}; pass --name"
        ))
    })?;
    let files = template.files();
    if let Some((path, _)) = files.iter().find(|(p, _)| dir.join(p).exists()) {
        return Err(InvalidInput(format!(
            "{} already exists; init writes into a new or empty folder",
            dir.join(path).display()
        ))
        .into());
    }
    let example = template.example();
    for (path, contents) in files {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("failed to create {}", parent.display()))?;
        }
        let contents = if path == "stratus.toml" {
            set_name(contents, &name)
        } else {
            contents.to_string()
        };
        std::fs::write(&target, contents)
            .with_context(|| format!("failed to write {}", target.display()))?;
    }
    eprintln!(
        "created `{name}` in {} from the {example} template; {}. Then: stratus deploy {}",
        dir.display(),
        template.next_steps(),
        dir.display()
    );
    Ok(dir.to_path_buf())
}

/// Replaces the example's `name = "..."` (the manifest's first line) with the chosen one.
fn set_name(manifest: &str, name: &str) -> String {
    manifest
        .lines()
        .map(|l| {
            if l.starts_with("name = ") {
                format!("name = \"{name}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_writes_a_valid_wasm_manifest() {
        for t in [Template::JsWasm, Template::PythonWasm, Template::RustWasm] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("My App!");
            run(t, &dir, None).unwrap();
            let spec = stratus_manifest::load_dir(&dir).unwrap();
            assert_eq!(spec.name.as_str(), "my-app", "{t:?}");
            assert_eq!(spec.runtime, stratus_core::RuntimeKind::Wasm);
            assert!(spec.build.command.is_some(), "{t:?} has a build command");
            // A second init into the same folder refuses rather than overwrites.
            assert!(run(t, &dir, None).is_err());
        }
    }
}
