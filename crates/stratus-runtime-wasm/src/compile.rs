//! From a `.wasm` file to a pre-instantiated component: validation with messages that say what
//! was wrong and what was expected, ahead-of-time compilation, and the on-disk cache of compiled
//! code that makes restarts and scale-from-zero skip the compiler.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::host::Host;

/// The export every function must have: the contract of `wasmtime serve` and Spin.
pub const HANDLER: &str = "wasi:http/incoming-handler";

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(
        "`{0}` is not a WebAssembly binary (it does not start with \\0asm): build a wasi:http component, for example with `cargo build --target wasm32-wasip2`"
    )]
    NotWasm(String),
    #[error(
        "`{0}` is a core WebAssembly module, not a component: runtime \"wasm\" needs a component exporting {HANDLER} (build for wasm32-wasip2, or wrap the module with `wasm-tools component new`)"
    )]
    CoreModule(String),
    #[error("`{file}` is not a valid component: {why}")]
    Invalid { file: String, why: String },
    #[error(
        "`{file}` does not export {HANDLER}; it exports {exports}. Build it for the wasi:http/proxy world (as for `wasmtime serve` or Spin)"
    )]
    NoHandler { file: String, exports: String },
    #[error("`{file}` cannot be linked: {why}")]
    Link { file: String, why: String },
    #[error("cannot read `{file}`: {why}")]
    Read { file: String, why: String },
    #[error("cannot write the compiled component to {path}: {why}")]
    Cache { path: String, why: String },
}

/// A component made ready to instantiate: compiled, linked, its handler export looked up.
pub struct Loaded {
    pub pre: ProxyPre<Host>,
    /// The compiled code's size on disk.
    pub compiled_bytes: u64,
}

/// Where the compiled code of a component whose bytes hash to `content_sha256` lives: keyed by
/// the component's content and the engine's compatibility hash only, so the same component
/// deployed as any number of functions (each its own artifact) is compiled once and shares one
/// file, and one loaded `Component` in memory.
pub fn cache_path(cache_dir: &Path, fingerprint: &str, content_sha256: &str) -> PathBuf {
    let mut h = Sha256::new();
    for part in [fingerprint, content_sha256] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    cache_dir.join(format!("{}.cwasm", hex::encode(&h.finalize()[..16])))
}

/// The sha256 of a component file, hex. Blocking (it reads the file).
pub fn content_sha256(src: &Path, file: &str) -> Result<String, CompileError> {
    let mut f = std::fs::File::open(src).map_err(|e| CompileError::Read {
        file: file.into(),
        why: e.to_string(),
    })?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| CompileError::Read {
        file: file.into(),
        why: e.to_string(),
    })?;
    Ok(hex::encode(h.finalize()))
}

/// What kind of binary `bytes` is, from its preamble: magic, then a version and a layer field
/// (layer 0 is a core module, 1 a component).
fn check_preamble(file: &str, bytes: &[u8]) -> Result<(), CompileError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(CompileError::NotWasm(file.into()));
    }
    match [bytes[6], bytes[7]] {
        [0, 0] => Err(CompileError::CoreModule(file.into())),
        [1, 0] => Ok(()),
        _ => Err(CompileError::Invalid {
            file: file.into(),
            why: "unknown binary layer (neither a core module nor a component)".into(),
        }),
    }
}

/// Links the component and finds its handler. A missing export is told apart from an import we
/// do not provide, since the fixes differ.
pub fn link(
    engine: &Engine,
    linker: &Linker<Host>,
    file: &str,
    component: &Component,
) -> Result<ProxyPre<Host>, CompileError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    if !exports
        .iter()
        .any(|e| e.starts_with(&format!("{HANDLER}@0.2")))
    {
        let exports = if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports
                .iter()
                .map(|e| format!("`{e}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(CompileError::NoHandler {
            file: file.into(),
            exports,
        });
    }
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| CompileError::Link {
            file: file.into(),
            why: format!("{e:#} (stratus provides WASI 0.2 and wasi:http 0.2)"),
        })?;
    ProxyPre::new(pre).map_err(|e| CompileError::Link {
        file: file.into(),
        why: format!("{e:#}"),
    })
}

/// Validates and compiles `src`, links it, and writes the compiled code to `dest` (to a
/// temporary file first, renamed into place, so a reader never sees half a file). Blocking: run
/// it on the blocking pool.
pub fn compile_to_cache(
    engine: &Engine,
    linker: &Linker<Host>,
    src: &Path,
    file: &str,
    dest: &Path,
) -> Result<Duration, CompileError> {
    let started = Instant::now();
    let bytes = std::fs::read(src).map_err(|e| CompileError::Read {
        file: file.into(),
        why: e.to_string(),
    })?;
    check_preamble(file, &bytes)?;
    let component = Component::from_binary(engine, &bytes).map_err(|e| CompileError::Invalid {
        file: file.into(),
        why: format!("{e:#}"),
    })?;
    link(engine, linker, file, &component)?;
    let cache_err = |e: &dyn std::fmt::Display| CompileError::Cache {
        path: dest.display().to_string(),
        why: e.to_string(),
    };
    let code = component.serialize().map_err(|e| cache_err(&e))?;
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| cache_err(&e))?;
    let tmp = tempfile_in(dir, dest);
    std::fs::write(&tmp, &code).map_err(|e| cache_err(&e))?;
    std::fs::rename(&tmp, dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        cache_err(&e)
    })?;
    Ok(started.elapsed())
}

fn tempfile_in(dir: &Path, dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    dir.join(format!(".{name}.{}.tmp", std::process::id()))
}

/// Loads compiled code from the cache. Blocking (it maps the file).
pub fn load_cached(
    engine: &Engine,
    linker: &Linker<Host>,
    file: &str,
    path: &Path,
) -> Result<Loaded, wasmtime::Error> {
    let compiled_bytes = std::fs::metadata(path)?.len();
    // SAFETY: `deserialize_file` trusts the file to be wasmtime's own output. It is: only
    // `compile_to_cache` writes this directory (inside the server's data dir, which tenants cannot
    // write), it renames complete files into place, and the name includes the engine's
    // compatibility hash. wasmtime still checks the header and version, so a stale or foreign file
    // is an error (and is recompiled), not undefined behaviour.
    #[allow(unsafe_code)]
    let component = unsafe { Component::deserialize_file(engine, path)? };
    let pre = link(engine, linker, file, &component)?;
    Ok(Loaded {
        pre,
        compiled_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_tells_modules_components_and_other_files_apart() {
        let module = wat::parse_str("(module)").unwrap();
        let component = wat::parse_str("(component)").unwrap();
        assert!(matches!(
            check_preamble("m.wasm", &module),
            Err(CompileError::CoreModule(_))
        ));
        assert!(check_preamble("c.wasm", &component).is_ok());
        assert!(matches!(
            check_preamble("x.wasm", b"<html>not wasm</html>"),
            Err(CompileError::NotWasm(_))
        ));
        assert!(matches!(
            check_preamble("x.wasm", b""),
            Err(CompileError::NotWasm(_))
        ));
    }

    #[test]
    fn cache_keys_follow_the_content_and_the_engine_only() {
        let root = Path::new("/cache");
        let a = cache_path(root, "e1", "aa");
        assert_eq!(a, cache_path(root, "e1", "aa"));
        assert_ne!(a, cache_path(root, "e2", "aa"));
        assert_ne!(a, cache_path(root, "e1", "bb"));
    }

    #[test]
    fn the_content_hash_is_the_files_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.wasm");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(
            content_sha256(&f, "x.wasm").unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let e = content_sha256(&dir.path().join("missing.wasm"), "missing.wasm").unwrap_err();
        assert!(e.to_string().contains("cannot read `missing.wasm`"), "{e}");
    }
}
