use std::fs;
use std::path::Path;

use tar::EntryType;

use super::{Raw, entry, file, gzip, raw_archive, read_to_string, refused};
use crate::{ArtifactError, UnpackLimits, unpack};

fn limits() -> UnpackLimits {
    UnpackLimits::default()
}

fn is(path: &Path, expected: &str) -> bool {
    path == Path::new(expected)
}

#[test]
fn refuses_absolute_path() {
    let err = refused(
        &raw_archive(&[file("ok.txt", "ok"), file("/etc/evil", "x")]),
        &limits(),
    );
    assert!(
        matches!(&err, ArtifactError::AbsolutePath { path } if is(path, "/etc/evil")),
        "{err}"
    );
}

#[test]
fn refuses_parent_dir_component() {
    let err = refused(&raw_archive(&[file("../x", "x")]), &limits());
    assert!(
        matches!(&err, ArtifactError::ParentDir { path } if is(path, "../x")),
        "{err}"
    );
    let err = refused(&raw_archive(&[file("a/../b", "x")]), &limits());
    assert!(
        matches!(&err, ArtifactError::ParentDir { path } if is(path, "a/../b")),
        "{err}"
    );
}

#[test]
fn refuses_absolute_symlink() {
    let archive = raw_archive(&[entry("passwd", EntryType::Symlink, "/etc/passwd")]);
    let err = refused(&archive, &limits());
    assert!(
        matches!(&err, ArtifactError::SymlinkEscape { path, target }
            if is(path, "passwd") && is(target, "/etc/passwd")),
        "{err}"
    );
}

#[test]
fn refuses_symlink_resolving_outside() {
    let archive = raw_archive(&[entry("link", EntryType::Symlink, "a/../../x")]);
    let err = refused(&archive, &limits());
    assert!(
        matches!(&err, ArtifactError::SymlinkEscape { path, .. } if is(path, "link")),
        "{err}"
    );
    // Deeper links may climb as far as the root, but not past it.
    let archive = raw_archive(&[entry("a/b/link", EntryType::Symlink, "../../../x")]);
    let err = refused(&archive, &limits());
    assert!(
        matches!(&err, ArtifactError::SymlinkEscape { path, .. } if is(path, "a/b/link")),
        "{err}"
    );
}

#[test]
fn refuses_symlink_chain_that_escapes() {
    // Lexically `l` stays inside, but `x/s` is a link to `y`, so `x/s/../..` is above the root.
    let archive = raw_archive(&[
        entry("y/", EntryType::Directory, ""),
        entry("x/s", EntryType::Symlink, "../y"),
        entry("l", EntryType::Symlink, "x/s/../.."),
    ]);
    let err = refused(&archive, &limits());
    assert!(
        matches!(&err, ArtifactError::SymlinkChain { path, .. } if is(path, "l")),
        "{err}"
    );
}

#[test]
fn refuses_writing_through_a_symlinked_parent() {
    let archive = raw_archive(&[
        entry("sub/", EntryType::Directory, ""),
        entry("a", EntryType::Symlink, "sub"),
        file("a/evil", "x"),
    ]);
    let err = refused(&archive, &limits());
    assert!(
        matches!(&err, ArtifactError::ParentNotDirectory { path } if is(path, "a/evil")),
        "{err}"
    );
}

#[test]
fn refuses_overwriting_an_entry() {
    let archive = raw_archive(&[entry("f", EntryType::Symlink, "g"), file("f", "x")]);
    let err = refused(&archive, &limits());
    assert!(
        matches!(&err, ArtifactError::Duplicate { path } if is(path, "f")),
        "{err}"
    );
}

#[test]
fn refuses_hard_links() {
    let archive = raw_archive(&[file("a", "a"), entry("b", EntryType::Link, "a")]);
    let err = refused(&archive, &limits());
    assert!(
        matches!(&err, ArtifactError::HardLink { path, target } if is(path, "b") && is(target, "a")),
        "{err}"
    );
}

#[test]
fn refuses_special_entries() {
    for (kind, name) in [
        (EntryType::Fifo, "fifo"),
        (EntryType::Char, "character device"),
        (EntryType::Block, "block device"),
    ] {
        let err = refused(&raw_archive(&[entry("dev", kind, "")]), &limits());
        assert!(
            matches!(&err, ArtifactError::SpecialEntry { path, kind } if is(path, "dev") && kind == name),
            "{err}"
        );
    }
}

#[test]
fn refuses_oversize_by_header() {
    let small = UnpackLimits {
        max_unpacked_bytes: 1000,
        ..limits()
    };
    let big = "x".repeat(1500);
    let err = refused(&raw_archive(&[file("big", &big)]), &small);
    assert!(
        matches!(&err, ArtifactError::TooLarge { path, limit: 1000 } if is(path, "big")),
        "{err}"
    );
    // Cumulative: each file fits, together they do not.
    let part = "x".repeat(600);
    let err = refused(&raw_archive(&[file("a", &part), file("b", &part)]), &small);
    assert!(
        matches!(&err, ArtifactError::TooLarge { path, .. } if is(path, "b")),
        "{err}"
    );
    // A header may claim far more than is sent; refused before any data is read.
    let lie = Raw {
        size: Some(1 << 40),
        ..file("lie", "tiny")
    };
    let err = refused(&raw_archive(&[lie]), &limits());
    assert!(
        matches!(&err, ArtifactError::TooLarge { path, .. } if is(path, "lie")),
        "{err}"
    );
}

#[test]
fn refuses_too_many_entries() {
    let few = UnpackLimits {
        max_entries: 3,
        ..limits()
    };
    let archive = raw_archive(&[file("a", ""), file("b", ""), file("c", ""), file("d", "")]);
    let err = refused(&archive, &few);
    assert!(
        matches!(&err, ArtifactError::TooManyEntries { path, limit: 3 } if is(path, "d")),
        "{err}"
    );
}

#[test]
fn refuses_oversize_metadata() {
    // A GNU long-name record is read into memory by `tar`; it must not be allowed to be huge.
    let long = "a".repeat(1 << 20);
    let archive = raw_archive(&[Raw {
        name: b"././@LongLink",
        kind: EntryType::GNULongName,
        link: b"",
        data: long.as_bytes(),
        size: None,
    }]);
    let err = refused(&archive, &limits());
    assert!(
        matches!(err, ArtifactError::OversizeMetadata { .. }),
        "{err}"
    );
}

#[test]
fn refuses_input_that_is_not_an_archive() {
    for input in [
        b"definitely not a tarball".to_vec(),
        Vec::new(),
        gzip(b"gzip, but the content is not tar at all"),
    ] {
        let err = refused(&input, &limits());
        assert!(matches!(err, ArtifactError::NotAnArchive { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("not a gzip-compressed tar archive"),
            "{err}"
        );
    }
}

#[test]
fn refuses_truncated_archive() {
    let big = "some incompressible-ish text 0123456789 ".repeat(2000);
    let mut archive = raw_archive(&[file("a", "a"), file("b", &big)]);
    archive.truncate(archive.len() / 2);
    let err = refused(&archive, &limits());
    assert!(matches!(err, ArtifactError::Corrupt(_)), "{err}");
}

#[test]
fn refuses_existing_destination_and_leaves_it_alone() {
    let parent = tempfile::tempdir().unwrap();
    let dest = parent.path().join("out");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("mine"), "keep").unwrap();
    let err = unpack(&raw_archive(&[file("a", "a")])[..], &dest, &limits()).unwrap_err();
    assert!(
        matches!(&err, ArtifactError::DestinationExists { path } if path == &dest),
        "{err}"
    );
    assert_eq!(read_to_string(&dest.join("mine")), "keep");
    assert_eq!(fs::read_dir(parent.path()).unwrap().count(), 1);
}

#[test]
fn accepts_dot_prefixed_paths_and_ignores_archive_modes_and_owners() {
    let mut header = tar::Header::new_gnu();
    header.set_path("./tool").unwrap();
    header.set_size(2);
    header.set_mode(0o4777); // setuid, world-writable
    header.set_uid(1234);
    header.set_entry_type(EntryType::Regular);
    header.set_cksum();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        Default::default(),
    ));
    tar.append(&header, &b"hi"[..]).unwrap();
    let archive = tar.into_inner().unwrap().finish().unwrap();

    let parent = tempfile::tempdir().unwrap();
    let dest = parent.path().join("out");
    let summary = unpack(&archive[..], &dest, &limits()).unwrap();
    assert_eq!((summary.files, summary.bytes), (1, 2));
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = fs::metadata(dest.join("tool")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    assert_eq!(meta.uid(), fs::metadata(parent.path()).unwrap().uid());
}
