//! Shared helpers: building trees on disk and hand-crafted (often malicious) archives.

mod packing;
mod unpacking;

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

use crate::{ArtifactError, UnpackLimits, unpack};

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

fn pack_to_vec(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    crate::pack(dir, &mut out, |_| {}).unwrap();
    out
}

/// Entry paths of an archive, in order.
fn list(archive: &[u8]) -> Vec<String> {
    let mut tar = tar::Archive::new(GzDecoder::new(archive));
    tar.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// One hand-written tar entry; name and link bytes go into the header verbatim so tests can
/// say things the `tar` builder refuses to (absolute paths, `..`).
struct Raw<'a> {
    name: &'a [u8],
    kind: EntryType,
    link: &'a [u8],
    data: &'a [u8],
    /// Header size when it should differ from `data.len()`.
    size: Option<u64>,
}

fn file<'a>(name: &'a str, data: &'a str) -> Raw<'a> {
    Raw {
        name: name.as_bytes(),
        kind: EntryType::Regular,
        link: b"",
        data: data.as_bytes(),
        size: None,
    }
}

fn entry<'a>(name: &'a str, kind: EntryType, link: &'a str) -> Raw<'a> {
    Raw {
        name: name.as_bytes(),
        kind,
        link: link.as_bytes(),
        data: b"",
        size: None,
    }
}

fn raw_archive(entries: &[Raw]) -> Vec<u8> {
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for e in entries {
        let mut header = Header::new_gnu();
        let old = header.as_old_mut();
        old.name[..e.name.len()].copy_from_slice(e.name);
        old.linkname[..e.link.len()].copy_from_slice(e.link);
        header.set_entry_type(e.kind);
        header.set_mode(0o644);
        header.set_size(e.size.unwrap_or(e.data.len() as u64));
        header.set_cksum();
        tar.append(&header, e.data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// Unpacks an archive that must be refused, checks nothing was left behind (neither `dest` nor
/// the temp dir), and returns the error for the caller to match.
fn refused(archive: &[u8], limits: &UnpackLimits) -> ArtifactError {
    let parent = tempfile::tempdir().unwrap();
    let dest = parent.path().join("out");
    let err = unpack(archive, &dest, limits).expect_err("archive should be refused");
    assert!(!dest.exists(), "dest exists after refusal: {err}");
    let left: Vec<_> = fs::read_dir(parent.path()).unwrap().collect();
    assert!(left.is_empty(), "leftovers after refusal: {left:?}");
    err
}

fn read_to_string(path: &Path) -> String {
    let mut s = String::new();
    fs::File::open(path)
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    s
}
