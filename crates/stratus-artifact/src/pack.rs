//! Deterministic packing: the same tree always produces the same bytes.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use ignore::WalkBuilder;
use tar::{EntryType, Header};

use crate::paths::{LinkProblem, check_link};
use crate::platform::is_executable;
use crate::{ArtifactError, STRATUSIGNORE};

/// What went into (or would go into) an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PackSummary {
    /// Regular files and symlinks (directories are not counted).
    pub files: u64,
    /// Uncompressed bytes of regular-file content.
    pub bytes: u64,
}

enum Kind {
    Dir,
    File { len: u64, executable: bool },
    Symlink { target: PathBuf },
}

struct Item {
    rel: PathBuf,
    full: PathBuf,
    kind: Kind,
}

/// Packs `dir` into a tar.gz written to `out`.
///
/// Honours `.gitignore` (even outside a git repo, and in parent directories), `.ignore` and
/// [`STRATUSIGNORE`]; the user's global git excludes are not read, so the archive depends on
/// the tree and not on the machine. Hidden files are included (`.git` is always skipped);
/// symlinks are stored as symlinks and must stay inside `dir`, as the server would refuse them
/// anyway; sockets, fifos and devices are skipped. Entries are sorted and their metadata
/// normalized (mtime 0, uid/gid 0, mode 0o644 or 0o755) so the output is byte-identical for the
/// same tree. `progress` gets the cumulative uncompressed bytes as file content is added.
pub fn pack(
    dir: &Path,
    out: impl Write,
    mut progress: impl FnMut(u64),
) -> Result<PackSummary, ArtifactError> {
    let items = collect(dir)?;
    let mut tar = tar::Builder::new(GzEncoder::new(out, Compression::default()));
    let mut summary = PackSummary::default();
    for item in &items {
        let mut header = Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(0);
        match &item.kind {
            Kind::Dir => {
                header.set_entry_type(EntryType::Directory);
                header.set_mode(0o755);
                tar.append_data(&mut header, &item.rel, io::empty())
                    .map_err(ArtifactError::WriteArchive)?;
            }
            Kind::Symlink { target } => {
                header.set_entry_type(EntryType::Symlink);
                header.set_mode(0o644);
                tar.append_link(&mut header, &item.rel, target)
                    .map_err(ArtifactError::WriteArchive)?;
                summary.files += 1;
            }
            Kind::File { executable, .. } => {
                let file = File::open(&item.full).map_err(ArtifactError::io(&item.full))?;
                let len = file
                    .metadata()
                    .map_err(ArtifactError::io(&item.full))?
                    .len();
                header.set_entry_type(EntryType::Regular);
                header.set_mode(if *executable { 0o755 } else { 0o644 });
                header.set_size(len);
                let mut reader = Progress {
                    inner: file.take(len),
                    read: 0,
                    base: summary.bytes,
                    failed: None,
                    progress: &mut progress,
                };
                let appended = tar.append_data(&mut header, &item.rel, &mut reader);
                if let Some(source) = reader.failed.take() {
                    return Err(ArtifactError::Io {
                        path: item.full.clone(),
                        source,
                    });
                }
                appended.map_err(ArtifactError::WriteArchive)?;
                // A file that shrank mid-read leaves an entry shorter than its header says.
                if reader.read != len {
                    return Err(ArtifactError::FileChanged {
                        path: item.full.clone(),
                    });
                }
                summary.bytes += len;
                summary.files += 1;
            }
        }
    }
    let gz = tar.into_inner().map_err(ArtifactError::WriteArchive)?;
    let mut out = gz.finish().map_err(ArtifactError::WriteArchive)?;
    out.flush().map_err(ArtifactError::WriteArchive)?;
    Ok(summary)
}

/// Total size of what [`pack`] would include, so the CLI can size a progress bar up front.
pub fn measure(dir: &Path) -> Result<PackSummary, ArtifactError> {
    let mut summary = PackSummary::default();
    for item in collect(dir)? {
        match item.kind {
            Kind::Dir => {}
            Kind::Symlink { .. } => summary.files += 1,
            Kind::File { len, .. } => {
                summary.files += 1;
                summary.bytes += len;
            }
        }
    }
    Ok(summary)
}

/// Walks `dir` with the ignore rules and returns the entries in archive order.
fn collect(dir: &Path) -> Result<Vec<Item>, ArtifactError> {
    let meta = fs::metadata(dir).map_err(ArtifactError::io(dir))?;
    if !meta.is_dir() {
        return Err(ArtifactError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let mut walk = WalkBuilder::new(dir);
    walk.hidden(false)
        .require_git(false)
        .git_global(false)
        .follow_links(false)
        .add_custom_ignore_filename(STRATUSIGNORE)
        .filter_entry(|entry| entry.file_name() != ".git");
    let mut items = Vec::new();
    for entry in walk.build() {
        let entry = entry?;
        if entry.depth() == 0 {
            continue;
        }
        let full = entry.path().to_path_buf();
        let Ok(rel) = full.strip_prefix(dir).map(Path::to_path_buf) else {
            continue;
        };
        let Some(file_type) = entry.file_type() else {
            continue;
        };
        let kind = if file_type.is_dir() {
            Kind::Dir
        } else if file_type.is_symlink() {
            let target = fs::read_link(&full).map_err(ArtifactError::io(&full))?;
            Kind::Symlink { target }
        } else if file_type.is_file() {
            let meta = entry.metadata()?;
            Kind::File {
                len: meta.len(),
                executable: is_executable(&meta),
            }
        } else {
            continue;
        };
        items.push(Item { rel, full, kind });
    }
    items.sort_by(|a, b| a.rel.cmp(&b.rel));
    check_symlinks(&items)?;
    Ok(items)
}

/// Applies the server's symlink rules before upload, so a bad link fails here with a path the
/// user can act on rather than after the transfer.
fn check_symlinks(items: &[Item]) -> Result<(), ArtifactError> {
    let links: HashSet<PathBuf> = items
        .iter()
        .filter(|i| matches!(i.kind, Kind::Symlink { .. }))
        .map(|i| i.rel.clone())
        .collect();
    for item in items {
        let Kind::Symlink { target } = &item.kind else {
            continue;
        };
        match check_link(&item.rel, target, &links) {
            Ok(()) => {}
            Err(LinkProblem::Escapes) => {
                return Err(ArtifactError::SymlinkEscape {
                    path: item.rel.clone(),
                    target: target.clone(),
                });
            }
            Err(LinkProblem::ThroughSymlink) => {
                return Err(ArtifactError::SymlinkChain {
                    path: item.rel.clone(),
                    target: target.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Reports progress while a file is copied in, and remembers read errors so they are blamed
/// on the file rather than on the archive output.
struct Progress<'a, R, F> {
    inner: R,
    read: u64,
    base: u64,
    failed: Option<io::Error>,
    progress: &'a mut F,
}

impl<R: Read, F: FnMut(u64)> Read for Progress<'_, R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                if n > 0 {
                    self.read += n as u64;
                    (self.progress)(self.base + self.read);
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let reported = io::Error::new(e.kind(), e.to_string());
                self.failed = Some(e);
                Err(reported)
            }
        }
    }
}
