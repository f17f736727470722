//! Validated extraction: uploads are untrusted, so every entry is checked before it is written
//! and nothing is ever written through a symlink.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use flate2::read::GzDecoder;
use tar::{Archive, Entry, EntryType};

use crate::ArtifactError;
use crate::paths::{LinkProblem, PathProblem, check_link, normalize};
use crate::platform::{normalized_mode, set_dir_mode, set_file_mode, symlink};

/// Tar headers, GNU long names and pax records allowed around one entry. The `tar` crate reads
/// long names and pax data into memory, so without this a tiny gzip could claim gigabytes.
const METADATA_BUDGET: u64 = 64 * 1024;

/// Caps on what one upload may expand to, so a small gzip cannot fill the server's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Total uncompressed bytes over all entries.
    pub max_unpacked_bytes: u64,
    /// Total number of entries of any type.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_unpacked_bytes: 1 << 30,
            max_entries: 100_000,
        }
    }
}

/// What was extracted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnpackSummary {
    /// Regular files and symlinks (directories are not counted).
    pub files: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
}

/// Validates and extracts a tar.gz into `dest`, which must not exist yet.
///
/// Extraction happens in a sibling `<dest>.tmp-<random>` directory that is renamed into place
/// only once every entry has passed, so a refused or broken upload leaves nothing at `dest`.
/// Regular files, directories and symlinks that stay inside the tree are extracted; modes keep
/// only the executable bit and ownership is never applied. Everything else is refused with an
/// error naming the entry.
pub fn unpack(
    reader: impl Read,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<UnpackSummary, ArtifactError> {
    ensure_absent(dest)?;
    let Some(name) = dest.file_name() else {
        return Err(ArtifactError::Io {
            path: dest.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "destination has no file name"),
        });
    };
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent).map_err(ArtifactError::io(parent))?;
    let mut prefix = name.to_os_string();
    prefix.push(".tmp-");
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir_in(parent)
        .map_err(ArtifactError::io(parent))?;
    let summary = Extractor::new(tmp.path(), limits).run(reader)?;
    set_dir_mode(tmp.path(), 0o755).map_err(ArtifactError::io(tmp.path()))?;
    ensure_absent(dest)?;
    fs::rename(tmp.path(), dest).map_err(ArtifactError::io(dest))?;
    let _ = tmp.keep();
    Ok(summary)
}

fn ensure_absent(dest: &Path) -> Result<(), ArtifactError> {
    match fs::symlink_metadata(dest) {
        Ok(_) => Err(ArtifactError::DestinationExists {
            path: dest.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ArtifactError::Io {
            path: dest.to_path_buf(),
            source: e,
        }),
    }
}

/// How far the decompressed tar stream may be read; shared between the reader the `tar` crate
/// pulls from and the loop that authorizes each entry's data.
#[derive(Default)]
struct Budget {
    read: Cell<u64>,
    allowed: Cell<u64>,
    tripped: Cell<bool>,
}

struct Limited<R> {
    inner: R,
    budget: Rc<Budget>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let budget = &self.budget;
        let left = budget.allowed.get().saturating_sub(budget.read.get());
        if buf.is_empty() {
            return Ok(0);
        }
        if left == 0 {
            // Only an error if there really is more data.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            budget.tripped.set(true);
            return Err(io::Error::other("archive metadata budget exceeded"));
        }
        let cap = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..cap])?;
        budget.read.set(budget.read.get() + n as u64);
        Ok(n)
    }
}

struct Extractor<'a> {
    root: &'a Path,
    limits: &'a UnpackLimits,
    budget: Rc<Budget>,
    entries: u64,
    declared: u64,
    written: u64,
    files: u64,
    /// (normalized path, target, path as archived) of every symlink, for the chain check.
    symlinks: Vec<(PathBuf, PathBuf, PathBuf)>,
}

impl<'a> Extractor<'a> {
    fn new(root: &'a Path, limits: &'a UnpackLimits) -> Self {
        Extractor {
            root,
            limits,
            budget: Rc::new(Budget::default()),
            entries: 0,
            declared: 0,
            written: 0,
            files: 0,
            symlinks: Vec::new(),
        }
    }

    fn run(mut self, mut reader: impl Read) -> Result<UnpackSummary, ArtifactError> {
        let mut magic = [0u8; 2];
        match reader.read_exact(&mut magic) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(ArtifactError::NotAnArchive {
                    detail: "input is empty".into(),
                });
            }
            Err(e) => return Err(ArtifactError::Corrupt(e)),
        }
        if magic != [0x1f, 0x8b] {
            return Err(ArtifactError::NotAnArchive {
                detail: "no gzip header".into(),
            });
        }
        self.budget.allowed.set(METADATA_BUDGET);
        let stream = Limited {
            inner: GzDecoder::new(Cursor::new(magic).chain(reader)),
            budget: Rc::clone(&self.budget),
        };
        let mut archive = Archive::new(stream);
        let entries = archive.entries().map_err(|e| self.read_error(e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.read_error(e))?;
            self.entry(&mut entry)?;
        }
        // Read to the end so the gzip checksum is verified, within the metadata budget.
        self.budget
            .allowed
            .set(self.budget.read.get() + METADATA_BUDGET);
        io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(|e| self.read_error(e))?;
        self.check_chains()?;
        Ok(UnpackSummary {
            files: self.files,
            bytes: self.written,
        })
    }

    fn read_error(&self, e: io::Error) -> ArtifactError {
        if self.budget.tripped.get() {
            ArtifactError::OversizeMetadata {
                limit: METADATA_BUDGET,
            }
        } else if self.entries == 0 {
            ArtifactError::NotAnArchive {
                detail: e.to_string(),
            }
        } else {
            ArtifactError::Corrupt(e)
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut Entry<R>) -> Result<(), ArtifactError> {
        let raw = entry.path().map_err(ArtifactError::Corrupt)?.into_owned();
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArtifactError::TooManyEntries {
                path: raw,
                limit: self.limits.max_entries,
            });
        }
        // Sizes of every type count: the data of a directory or link is still decompressed.
        let size = entry.size();
        self.declared = self.declared.saturating_add(size);
        if self.declared > self.limits.max_unpacked_bytes {
            return Err(ArtifactError::TooLarge {
                path: raw,
                limit: self.limits.max_unpacked_bytes,
            });
        }
        let padded = size.div_ceil(512).saturating_mul(512);
        self.budget.allowed.set(
            self.budget
                .read
                .get()
                .saturating_add(padded)
                .saturating_add(METADATA_BUDGET),
        );
        let rel = match normalize(&raw) {
            Ok(rel) => rel,
            Err(PathProblem::Absolute) => return Err(ArtifactError::AbsolutePath { path: raw }),
            Err(PathProblem::ParentDir) => return Err(ArtifactError::ParentDir { path: raw }),
        };
        match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous => self.file(entry, raw, &rel),
            EntryType::Directory => self.dir(raw, &rel),
            EntryType::Symlink => self.symlink(entry, raw, &rel),
            EntryType::Link => {
                let target = link_target(entry)?;
                Err(ArtifactError::HardLink { path: raw, target })
            }
            // Metadata for the whole archive (e.g. `git archive`'s commit id): nothing to write.
            EntryType::XGlobalHeader => Ok(()),
            other => Err(ArtifactError::SpecialEntry {
                path: raw,
                kind: describe(other),
            }),
        }
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut Entry<R>,
        raw: PathBuf,
        rel: &Path,
    ) -> Result<(), ArtifactError> {
        let full = self.prepare(&raw, rel)?;
        let mode = normalized_mode(entry.header().mode().unwrap_or(0o644));
        // create_new never follows a symlink at the final component.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&full)
            .map_err(ArtifactError::io(&full))?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ArtifactError::Corrupt(e)),
            };
            // Headers were checked already; count what is really written too.
            self.written += n as u64;
            if self.written > self.limits.max_unpacked_bytes {
                return Err(ArtifactError::TooLarge {
                    path: raw,
                    limit: self.limits.max_unpacked_bytes,
                });
            }
            file.write_all(&buf[..n])
                .map_err(ArtifactError::io(&full))?;
        }
        set_file_mode(&file, mode).map_err(ArtifactError::io(&full))?;
        self.files += 1;
        Ok(())
    }

    fn dir(&mut self, raw: PathBuf, rel: &Path) -> Result<(), ArtifactError> {
        if rel.as_os_str().is_empty() {
            return Ok(()); // `./`: the root itself
        }
        self.ensure_parents(&raw, rel)?;
        let full = self.root.join(rel);
        match fs::symlink_metadata(&full) {
            Ok(meta) if meta.is_dir() => Ok(()), // already created as some entry's parent
            Ok(_) => Err(ArtifactError::Duplicate { path: raw }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => make_dir(&full),
            Err(e) => Err(ArtifactError::Io {
                path: full,
                source: e,
            }),
        }
    }

    fn symlink<R: Read>(
        &mut self,
        entry: &mut Entry<R>,
        raw: PathBuf,
        rel: &Path,
    ) -> Result<(), ArtifactError> {
        let target = link_target(entry)?;
        // Chains need every link in the archive; those are checked once all are known.
        if let Err(LinkProblem::Escapes) = check_link(rel, &target, &HashSet::new()) {
            return Err(ArtifactError::SymlinkEscape { path: raw, target });
        }
        let full = self.prepare(&raw, rel)?;
        symlink(&target, &full).map_err(ArtifactError::io(&full))?;
        self.symlinks.push((rel.to_path_buf(), target, raw));
        self.files += 1;
        Ok(())
    }

    /// Makes the parents of a non-directory entry and checks nothing is at its path yet.
    fn prepare(&self, raw: &Path, rel: &Path) -> Result<PathBuf, ArtifactError> {
        if rel.as_os_str().is_empty() {
            return Err(ArtifactError::Duplicate {
                path: raw.to_path_buf(),
            });
        }
        self.ensure_parents(raw, rel)?;
        let full = self.root.join(rel);
        match fs::symlink_metadata(&full) {
            Ok(_) => Err(ArtifactError::Duplicate {
                path: raw.to_path_buf(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(full),
            Err(e) => Err(ArtifactError::Io {
                path: full,
                source: e,
            }),
        }
    }

    /// Creates missing parents one level at a time, refusing any that is a symlink or file:
    /// `create_dir_all` would follow a symlinked parent out of the tree.
    fn ensure_parents(&self, raw: &Path, rel: &Path) -> Result<(), ArtifactError> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        let mut current = self.root.to_path_buf();
        for component in parent.components() {
            current.push(component);
            match fs::symlink_metadata(&current) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(ArtifactError::ParentNotDirectory {
                        path: raw.to_path_buf(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => make_dir(&current)?,
                Err(e) => {
                    return Err(ArtifactError::Io {
                        path: current,
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }

    fn check_chains(&self) -> Result<(), ArtifactError> {
        let links: HashSet<PathBuf> = self.symlinks.iter().map(|(rel, ..)| rel.clone()).collect();
        for (rel, target, raw) in &self.symlinks {
            if check_link(rel, target, &links).is_err() {
                return Err(ArtifactError::SymlinkChain {
                    path: raw.clone(),
                    target: target.clone(),
                });
            }
        }
        Ok(())
    }
}

fn make_dir(path: &Path) -> Result<(), ArtifactError> {
    fs::create_dir(path).map_err(ArtifactError::io(path))?;
    set_dir_mode(path, 0o755).map_err(ArtifactError::io(path))
}

fn link_target<R: Read>(entry: &Entry<R>) -> Result<PathBuf, ArtifactError> {
    Ok(entry
        .link_name()
        .map_err(ArtifactError::Corrupt)?
        .map(|t| t.into_owned())
        .unwrap_or_default())
}

fn describe(kind: EntryType) -> String {
    match kind {
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Fifo => "fifo".into(),
        EntryType::GNUSparse => "sparse file".into(),
        other => format!("tar type {:?}", other.as_byte() as char),
    }
}
