use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::time::{Duration, SystemTime};

use flate2::read::GzDecoder;

use super::{list, pack_to_vec, read_to_string, write};
use crate::{ArtifactError, PackSummary, UnpackLimits, measure, pack, unpack};

#[test]
fn pack_honours_ignore_files_outside_git_and_keeps_hidden_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, ".gitignore", "node_modules/\n*.log\n");
    write(d, ".stratusignore", "secrets.txt\n");
    write(d, ".ignore", "tmp/\n");
    write(d, ".env.example", "KEY=\n");
    write(d, "src/main.js", "console.log(1)\n");
    write(d, "node_modules/dep/index.js", "x\n");
    write(d, "debug.log", "noise\n");
    write(d, "secrets.txt", "hunter2\n");
    write(d, "tmp/scratch", "x\n");
    write(d, "sub/.gitignore", "local.txt\n");
    write(d, "sub/local.txt", "x\n");
    write(d, "sub/keep.txt", "kept\n");

    let entries = list(&pack_to_vec(d));
    assert_eq!(
        entries,
        [
            ".env.example",
            ".gitignore",
            ".ignore",
            ".stratusignore",
            "src",
            "src/main.js",
            "sub",
            "sub/.gitignore",
            "sub/keep.txt",
        ]
    );
}

#[test]
fn pack_always_skips_git() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, ".git/HEAD", "ref: refs/heads/main\n");
    write(d, "lib/.git", "gitdir: ../.git/modules/lib\n"); // submodule pointer file
    write(d, "lib/mod.js", "x\n");
    write(d, ".gitignore", "*.log\n");
    write(d, "a.log", "x\n");
    assert_eq!(list(&pack_to_vec(d)), [".gitignore", "lib", "lib/mod.js"]);
}

#[test]
fn packing_twice_is_byte_identical_despite_mtimes() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "b.txt", "bbb");
    write(dir.path(), "a/z.txt", "zzz");
    write(dir.path(), "a/y.txt", "yyy");
    let first = pack_to_vec(dir.path());
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    fs::File::options()
        .write(true)
        .open(dir.path().join("b.txt"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let second = pack_to_vec(dir.path());
    assert_eq!(first, second);
    assert_eq!(list(&first), ["a", "a/y.txt", "a/z.txt", "b.txt"]);

    let mut tar = tar::Archive::new(GzDecoder::new(&first[..]));
    for e in tar.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        assert_eq!(h.mtime().unwrap(), 0);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        assert!(matches!(h.mode().unwrap(), 0o644 | 0o755));
    }
}

#[test]
fn roundtrip_preserves_content_exec_bit_and_internal_symlink() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    write(s, "bin/run.sh", "#!/bin/sh\necho hi\n");
    fs::set_permissions(s.join("bin/run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
    write(s, "data/config.json", "{}");
    fs::set_permissions(
        s.join("data/config.json"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::create_dir(s.join("empty")).unwrap();
    symlink("../data/config.json", s.join("bin/config.json")).unwrap();

    let mut archive = Vec::new();
    let packed = pack(s, &mut archive, |_| {}).unwrap();
    assert_eq!(packed, measure(s).unwrap());
    assert_eq!(
        packed,
        PackSummary {
            files: 3,
            bytes: 20
        }
    );

    let parent = tempfile::tempdir().unwrap();
    let dest = parent.path().join("v1");
    let unpacked = unpack(&archive[..], &dest, &UnpackLimits::default()).unwrap();
    assert_eq!(
        (unpacked.files, unpacked.bytes),
        (packed.files, packed.bytes)
    );

    assert_eq!(
        read_to_string(&dest.join("bin/run.sh")),
        "#!/bin/sh\necho hi\n"
    );
    let mode = |p: &str| fs::metadata(dest.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("bin/run.sh"), 0o755);
    assert_eq!(mode("data/config.json"), 0o644);
    assert_eq!(mode("empty"), 0o755);
    assert_eq!(mode(""), 0o755);
    let link = dest.join("bin/config.json");
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_link(&link).unwrap().to_str(),
        Some("../data/config.json")
    );
    assert_eq!(read_to_string(&link), "{}");
    // Only `v1` is left: the temp dir was renamed, not copied.
    assert_eq!(fs::read_dir(parent.path()).unwrap().count(), 1);
}

#[test]
fn progress_is_cumulative_and_ends_at_total() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a", &"x".repeat(100_000));
    write(dir.path(), "b", &"y".repeat(50));
    let mut seen = Vec::new();
    let summary = pack(dir.path(), std::io::sink(), |n| seen.push(n)).unwrap();
    assert_eq!(summary.bytes, 100_050);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(seen.last(), Some(&100_050));
}

#[test]
fn pack_refuses_symlink_leaving_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.txt", "a");
    symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
    let err = pack(dir.path(), std::io::sink(), |_| {}).unwrap_err();
    assert!(
        matches!(&err, ArtifactError::SymlinkEscape { path, .. } if path.to_str() == Some("passwd")),
        "{err}"
    );
}

#[test]
fn pack_refuses_a_file_instead_of_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.txt", "a");
    let err = measure(&dir.path().join("a.txt")).unwrap_err();
    assert!(matches!(err, ArtifactError::NotADirectory { .. }), "{err}");
}
