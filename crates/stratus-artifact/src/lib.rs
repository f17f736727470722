//! The deploy archive format: a gzip-compressed tar.
//!
//! The CLI packs a function directory with [`pack`]; the server validates and extracts an upload
//! with [`unpack`]. Packing is deterministic (sorted entries, normalized metadata) so the same
//! tree always hashes the same and the server's sha256 dedup works. Unpacking trusts nothing in
//! the archive: every path, link, type and size is checked before anything lands at `dest`.
#![forbid(unsafe_code)]

mod pack;
mod paths;
mod platform;
mod unpack;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

pub use pack::{PackSummary, measure, pack};
pub use unpack::{UnpackLimits, UnpackSummary, unpack};

/// Per-directory ignore file (gitignore syntax) for files that are in git but must not ship.
pub const STRATUSIGNORE: &str = ".stratusignore";

/// Everything that can go wrong packing or unpacking. Refusals name the offending entry so the
/// person deploying can find it; the server maps them to an "invalid archive" response.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("cannot access {}: {source}; check that it exists and is readable/writable", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a directory; pass the directory to deploy", path.display())]
    NotADirectory { path: PathBuf },
    #[error("cannot walk the directory: {0}; fix the permissions or the ignore file it names")]
    Walk(#[from] ignore::Error),
    #[error("cannot write the archive: {0}; check the output destination has room")]
    WriteArchive(#[source] io::Error),
    #[error("{} changed while it was being packed; stop whatever writes to it and retry", path.display())]
    FileChanged { path: PathBuf },
    #[error("not a gzip-compressed tar archive ({detail}); create it with `stratus deploy`")]
    NotAnArchive { detail: String },
    #[error("the archive is corrupt or truncated: {0}; upload it again")]
    Corrupt(#[source] io::Error),
    #[error("{} already exists; unpack into a new directory", path.display())]
    DestinationExists { path: PathBuf },
    #[error("refusing entry {}: absolute paths are not allowed; pack with relative paths", path.display())]
    AbsolutePath { path: PathBuf },
    #[error("refusing entry {}: `..` components are not allowed; pack with plain relative paths", path.display())]
    ParentDir { path: PathBuf },
    #[error(
        "refusing symlink {} -> {}: it points outside the deployed directory; make it relative and keep its target inside",
        path.display(), target.display()
    )]
    SymlinkEscape { path: PathBuf, target: PathBuf },
    #[error(
        "refusing symlink {} -> {}: its target goes through another symlink; point it at the real path",
        path.display(), target.display()
    )]
    SymlinkChain { path: PathBuf, target: PathBuf },
    #[error("refusing hard link {} -> {}: hard links are not supported; replace it with a copy", path.display(), target.display())]
    HardLink { path: PathBuf, target: PathBuf },
    #[error("refusing entry {}: {kind} entries are not supported; remove it from the directory", path.display())]
    SpecialEntry { path: PathBuf, kind: String },
    #[error("refusing entry {}: a parent of it is a file or symlink in the archive; remove the conflicting entry", path.display())]
    ParentNotDirectory { path: PathBuf },
    #[error("refusing entry {}: it appears more than once in the archive; repack with `stratus deploy`", path.display())]
    Duplicate { path: PathBuf },
    #[error(
        "refusing entry {}: the archive unpacks to more than {limit} bytes; shrink the deployment or list large files in .stratusignore",
        path.display()
    )]
    TooLarge { path: PathBuf, limit: u64 },
    #[error(
        "refusing entry {}: the archive has more than {limit} entries; list generated files in .stratusignore",
        path.display()
    )]
    TooManyEntries { path: PathBuf, limit: u64 },
    #[error(
        "refusing the archive: more than {limit} bytes of tar headers or trailing data around one entry; repack with `stratus deploy`"
    )]
    OversizeMetadata { limit: u64 },
}

impl ArtifactError {
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ArtifactError {
        let path = path.into();
        move |source| ArtifactError::Io { path, source }
    }
}
