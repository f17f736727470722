//! `stratus.toml`: the user's manifest, parsed strictly (unknown keys are errors) and validated
//! into [`stratus_core::FunctionSpec`].
//!
//! Errors carry the file, line, column and dotted key they are about, and say what is allowed, so
//! that `stratus deploy` can print `stratus.toml:7:1: limits.timout: unknown key ...`.
#![forbid(unsafe_code)]

mod events;
mod locate;
mod runtime;
mod scaling;
pub mod schedule;
mod schema;

use std::fmt;
use std::path::Path;

pub use schema::{CURRENT_MANIFEST_VERSION, Manifest};
use stratus_core::FunctionSpec;

pub const MANIFEST_FILE: &str = "stratus.toml";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    pub file: String,
    /// 1-based; 0 when the error is about the file as a whole.
    pub line: usize,
    pub column: usize,
    /// Dotted key path, such as `limits.timeout`, when known.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Parses and validates manifest text. `file` names it in errors.
pub fn parse(file: &str, src: &str) -> Result<FunctionSpec, ManifestError> {
    let manifest: Manifest = toml::from_str(src).map_err(|e| {
        let (line, column, key) = match e.span() {
            Some(span) => {
                let (line, column) = locate::line_col(src, span.start);
                (line, column, locate::key_at(src, span.start))
            }
            None => (0, 0, None),
        };
        ManifestError {
            file: file.to_string(),
            line,
            column,
            key,
            message: clean_message(e.message()),
        }
    })?;
    manifest.validate().map_err(|(key, message)| {
        let (line, column) = locate::find_key(src, &key).unwrap_or((0, 0));
        ManifestError {
            file: file.to_string(),
            line,
            column,
            key: Some(key),
            message,
        }
    })
}

/// Reads `DIR/stratus.toml`.
pub fn load_dir(dir: &Path) -> Result<FunctionSpec, ManifestError> {
    let path = dir.join(MANIFEST_FILE);
    let shown = path.display().to_string();
    let src = std::fs::read_to_string(&path).map_err(|e| ManifestError {
        file: shown.clone(),
        line: 0,
        column: 0,
        key: None,
        message: format!(
            "cannot read the manifest ({e}); every function folder needs a {MANIFEST_FILE}"
        ),
    })?;
    parse(&shown, &src)
}

/// serde's messages name fields "field"; ours are TOML keys.
fn clean_message(m: &str) -> String {
    m.trim()
        .replace("unknown field", "unknown key")
        .replace("missing field", "missing key")
}
