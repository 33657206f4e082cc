//! Tests of packing, persisting, verifying and unpacking, on real files in temporary directories.

use std::fs::{self, FileTimes};
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use super::*;
use crate::select::select;

fn patterns(list: &[&str]) -> Vec<String> {
    list.iter().map(|p| (*p).to_string()).collect()
}

fn write(root: &Path, rel: &str, contents: &[u8]) -> PathBuf {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().expect("test paths have parents")).expect("create parent");
    fs::write(&path, contents).expect("write test file");
    path
}

/// Incompressible bytes from a fixed seed.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

const LONG_DIR: &str =
    "a-rather-long-directory-name-to-push-the-path-past-one-hundred-bytes/and-another-long-one-below-it";

/// A workspace with the interesting cases: nested files, an executable, an empty directory, a
/// file larger than the read buffer, a path longer than a tar header holds, links.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "src/main.rs", b"fn main() { println!(\"hi\"); }\n");
    write(root, "src/lib/util.rs", b"pub fn util() {}\n");
    let script = write(root, "bin/run.sh", b"#!/bin/sh\necho run\n");
    write(root, "blob/big.bin", &noise(3 * READ_BUFFER + 123, 7));
    write(root, "blob/empty.bin", b"");
    write(root, &format!("{LONG_DIR}/deep-file-with-a-long-name.txt"), b"deep");
    fs::create_dir_all(root.join("cache/empty")).expect("empty dir");
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    fs::File::options()
        .write(true)
        .open(root.join("src/main.rs"))
        .and_then(|f| f.set_times(FileTimes::new().set_modified(old)))
        .expect("set mtime");
    #[cfg(unix)]
    {
        use std::os::unix::fs::{PermissionsExt, symlink};
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
        symlink("src/main.rs", root.join("main-link")).expect("link");
        symlink(format!("../{LONG_DIR}/deep-file-with-a-long-name.txt"), root.join("src/long-link")).expect("link");
    }
    #[cfg(not(unix))]
    let _ = script;
    dir
}

fn pack_all(root: &Path, out: &Path, limits: PackLimits) -> Result<Packed, ArchiveError> {
    let selection = select(root, &patterns(&["."])).expect("select");
    pack(root, &selection, out, limits)
}

#[test]
fn round_trip_keeps_contents_modes_times_dirs_and_links() {
    let ws = workspace();
    let out = tempfile::tempdir().expect("tempdir");
    let selection = select(ws.path(), &patterns(&["."])).expect("select");
    let packed = pack(ws.path(), &selection, out.path(), PackLimits::default()).expect("pack");
    assert_eq!(packed.files, selection.file_count() as u64);
    assert_eq!(packed.size, fs::metadata(packed.file.path()).expect("stat").len());
    let sha = packed.sha256.clone();
    let archive = out.path().join("ws.tar.zst");
    assert_eq!(persist(packed, &archive).expect("persist"), Persisted::Written);
    assert_eq!(names(out.path()), ["ws.tar.zst"], "no temporary file is left behind");

    let dest = tempfile::tempdir().expect("tempdir");
    let target = dest.path().join("restored/here");
    let unpacked = unpack(&archive, &sha, &target).expect("unpack");
    assert_eq!(unpacked, Unpacked { files: selection.file_count() as u64, bytes: selection.total_bytes });

    for entry in &selection.entries {
        let original = ws.path().join(&entry.path);
        let restored = target.join(&entry.path);
        match &entry.kind {
            EntryKind::File => {
                assert_eq!(fs::read(&restored).expect("read"), fs::read(&original).expect("read"), "{entry:?}");
                let (a, b) = (fs::metadata(&original).expect("stat"), fs::metadata(&restored).expect("stat"));
                assert_eq!(mtime_of(&a), mtime_of(&b), "mtime of {}", entry.path.display());
                assert_eq!(mode_of(&a) & 0o777, mode_of(&b) & 0o777, "mode of {}", entry.path.display());
            }
            EntryKind::Dir => assert!(restored.is_dir(), "{}", restored.display()),
            EntryKind::Symlink(link) => assert_eq!(&fs::read_link(&restored).expect("readlink"), link),
        }
    }
    assert!(target.join("cache/empty").is_dir(), "empty directories survive");
    assert_eq!(
        mtime_of(&fs::metadata(target.join("src/main.rs")).expect("stat")),
        1_600_000_000,
        "modification times are restored"
    );
    #[cfg(unix)]
    {
        assert_eq!(mode_of(&fs::metadata(target.join("bin/run.sh")).expect("stat")) & 0o777, 0o755);
        assert_eq!(
            fs::read(target.join("main-link")).expect("read through link"),
            fs::read(target.join("src/main.rs")).expect("read")
        );
        assert_eq!(fs::read(target.join("src/long-link")).expect("read through long link"), b"deep");
    }

    // Restoring again over an existing tree overwrites changed files.
    fs::write(target.join("src/main.rs"), b"stale").expect("write");
    unpack(&archive, &sha, &target).expect("unpack again");
    assert_eq!(
        fs::read(target.join("src/main.rs")).expect("read"),
        fs::read(ws.path().join("src/main.rs")).expect("read")
    );
}

#[test]
fn packing_is_deterministic() {
    let ws = workspace();
    let out = tempfile::tempdir().expect("tempdir");
    let one = pack_all(ws.path(), out.path(), PackLimits::default()).expect("pack");
    let two = pack_all(ws.path(), out.path(), PackLimits::default()).expect("pack");
    assert_eq!(one.sha256, two.sha256);
    assert_eq!(one.size, two.size);
    assert_eq!(verify(one.file.path(), &one.sha256).expect("verify"), one.size);
}

#[test]
fn a_corrupt_archive_is_reported_before_anything_is_written() {
    let ws = workspace();
    let out = tempfile::tempdir().expect("tempdir");
    let packed = pack_all(ws.path(), out.path(), PackLimits::default()).expect("pack");
    let sha = packed.sha256.clone();
    let archive = out.path().join("ws.tar.zst");
    persist(packed, &archive).expect("persist");
    let mut bytes = fs::read(&archive).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs::write(&archive, &bytes).expect("write");

    match verify(&archive, &sha) {
        Err(ArchiveError::Corrupt { path, expected, actual }) => {
            assert_eq!(path, archive);
            assert_eq!(expected, sha);
            assert_ne!(actual, sha);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let dest = tempfile::tempdir().expect("tempdir");
    let fresh = dest.path().join("fresh");
    let err = unpack(&archive, &sha, &fresh).expect_err("corrupt");
    assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("ws.tar.zst"), "{err}");
    assert!(!fresh.exists(), "the destination is not even created");
    write(dest.path(), "existing/keep.txt", b"keep");
    let err = unpack(&archive, &sha, &dest.path().join("existing")).expect_err("corrupt");
    assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err}");
    assert_eq!(names(&dest.path().join("existing")), ["keep.txt"]);

    let err = verify(&archive, &sha.to_uppercase()).expect_err("not lower-case hex");
    assert!(matches!(err, ArchiveError::BadChecksum { .. }), "{err}");
    assert!(matches!(unpack(&archive, "abc", dest.path()), Err(ArchiveError::BadChecksum { .. })));
}

#[test]
fn too_large_stops_and_leaves_no_temporary_file() {
    let ws = tempfile::tempdir().expect("tempdir");
    write(ws.path(), "a/small.txt", b"small");
    write(ws.path(), "b/noise.bin", &noise(200_000, 3));
    let out = tempfile::tempdir().expect("tempdir");
    let limits = PackLimits { max_bytes: Some(50_000), ..PackLimits::default() };
    match pack_all(ws.path(), out.path(), limits) {
        Err(err @ ArchiveError::TooLarge { limit: 50_000, selected_bytes: 200_005 }) => {
            assert!(err.to_string().contains("50000 bytes"), "{err}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(names(out.path()).is_empty(), "{:?}", names(out.path()));

    let roomy = PackLimits { max_bytes: Some(300_000), ..PackLimits::default() };
    let packed = pack_all(ws.path(), out.path(), roomy).expect("within the limit");
    assert!(packed.size <= 300_000);
    let level = PackLimits { level: 99, ..PackLimits::default() };
    assert!(matches!(pack_all(ws.path(), out.path(), level), Err(ArchiveError::Level { level: 99, .. })));
}

#[test]
fn racing_persists_leave_exactly_one_intact_archive() {
    let ws = workspace();
    let out = tempfile::tempdir().expect("tempdir");
    for round in 0..8 {
        let dest = out.path().join(format!("key-{round}.tar.zst"));
        let contenders: Vec<Packed> =
            (0..3).map(|_| pack_all(ws.path(), out.path(), PackLimits::default()).expect("pack")).collect();
        let sha = contenders[0].sha256.clone();
        let barrier = Arc::new(Barrier::new(contenders.len()));
        let threads: Vec<_> = contenders
            .into_iter()
            .map(|packed| {
                let (barrier, dest) = (Arc::clone(&barrier), dest.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    persist(packed, &dest).expect("persist")
                })
            })
            .collect();
        let mut outcomes: Vec<Persisted> = threads.into_iter().map(|t| t.join().expect("thread")).collect();
        outcomes.sort_by_key(|o| *o != Persisted::Written);
        assert_eq!(outcomes, [Persisted::Written, Persisted::AlreadyExists, Persisted::AlreadyExists]);
        verify(&dest, &sha).expect("the winner is intact");
    }
    let expected: Vec<String> = (0..8).map(|round| format!("key-{round}.tar.zst")).collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(names(out.path()), expected, "losers' temporary files are removed");
}

#[cfg(unix)]
#[test]
fn a_file_swapped_for_a_link_after_selection_is_not_followed() {
    let ws = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    write(outside.path(), "secret", b"secret");
    write(ws.path(), "data.txt", b"data");
    let selection = select(ws.path(), &patterns(&["."])).expect("select");
    fs::remove_file(ws.path().join("data.txt")).expect("remove");
    std::os::unix::fs::symlink(outside.path().join("secret"), ws.path().join("data.txt")).expect("link");
    let out = tempfile::tempdir().expect("tempdir");
    let err = pack(ws.path(), &selection, out.path(), PackLimits::default()).expect_err("changed");
    assert!(matches!(err, ArchiveError::Changed { .. }), "{err}");
    assert!(err.to_string().contains("data.txt"), "{err}");
    assert!(names(out.path()).is_empty());
}

/// A tar header written byte by byte, so that it can say what `tar::Builder` refuses to.
fn raw_header(name: &str, kind: EntryType, size: u64, link: &str) -> Header {
    let mut header = Header::new_gnu();
    let old = header.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(1_600_000_000);
    header.set_uid(0);
    header.set_gid(0);
    header.set_cksum();
    header
}

/// Writes a hand-made tar (headers and contents) as a tar + zstd archive; returns its path and
/// checksum.
fn crafted(dir: &Path, entries: &[(Header, &[u8])]) -> (PathBuf, String) {
    let mut tar = Vec::new();
    for (header, data) in entries {
        tar.extend_from_slice(header.as_bytes());
        tar.extend_from_slice(data);
        tar.resize(tar.len().next_multiple_of(512), 0);
    }
    tar.resize(tar.len() + 1024, 0);
    let compressed = zstd::encode_all(&tar[..], 3).expect("compress");
    let path = dir.join("crafted.tar.zst");
    fs::write(&path, &compressed).expect("write");
    (path, crate::hex(&Sha256::digest(&compressed)))
}

fn file(name: &str, data: &[u8]) -> Header {
    raw_header(name, EntryType::Regular, data.len() as u64, "")
}

fn link(name: &str, target: &str) -> Header {
    raw_header(name, EntryType::Symlink, 0, target)
}

#[test]
fn dotdot_and_absolute_entries_are_refused() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dest = scratch.path().join("dest");
    let (archive, sha) =
        crafted(scratch.path(), &[(file("ok.txt", b"ok"), b"ok"), (file("../evil", b"evil"), b"evil")]);
    match unpack(&archive, &sha, &dest) {
        Err(ArchiveError::Unsafe { entry, reason, .. }) => {
            assert_eq!(entry, Path::new("../evil"));
            assert!(reason.contains(".."), "{reason}");
        }
        other => panic!("expected Unsafe, got {other:?}"),
    }
    assert!(!scratch.path().join("evil").exists());

    let absolute = scratch.path().join("absolute-evil");
    let name = absolute.to_str().expect("utf-8 temp path");
    let (archive, sha) = crafted(scratch.path(), &[(file(name, b"evil"), b"evil")]);
    let err = unpack(&archive, &sha, &dest).expect_err("absolute");
    assert!(matches!(&err, ArchiveError::Unsafe { reason, .. } if reason.contains("absolute")), "{err}");
    assert!(!absolute.exists());

    let (archive, sha) = crafted(scratch.path(), &[(raw_header("hard", EntryType::Link, 0, "ok.txt"), b"")]);
    let err = unpack(&archive, &sha, &dest).expect_err("hard link");
    assert!(matches!(err, ArchiveError::Unsafe { .. }), "{err}");
}

#[cfg(unix)]
#[test]
fn links_cannot_redirect_writes_outside() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let outside_name = outside.path().to_str().expect("utf-8 temp path");
    let dest = scratch.path().join("dest");

    // An absolute link, then a file through it.
    let (archive, sha) =
        crafted(scratch.path(), &[(link("door", outside_name), b""), (file("door/evil", b"evil"), b"evil")]);
    let err = unpack(&archive, &sha, &dest).expect_err("absolute link");
    assert!(matches!(&err, ArchiveError::Unsafe { entry, .. } if entry == Path::new("door")), "{err}");
    assert!(names(outside.path()).is_empty());

    // A relative link climbing out, then a file through it.
    let (archive, sha) = crafted(scratch.path(), &[(link("up", "../.."), b""), (file("up/evil", b"evil"), b"evil")]);
    let err = unpack(&archive, &sha, &dest).expect_err("climbing link");
    assert!(matches!(&err, ArchiveError::Unsafe { reason, .. } if reason.contains("leaves the destination")), "{err}");
    assert!(!scratch.path().join("evil").exists());

    // A link that only escapes once an earlier link of the archive is resolved.
    let (archive, sha) = crafted(scratch.path(), &[(link("here", "."), b""), (link("here/esc", "../x"), b"")]);
    let err = unpack(&archive, &sha, &dest).expect_err("escape through a link");
    assert!(matches!(&err, ArchiveError::Unsafe { entry, .. } if entry == Path::new("here/esc")), "{err}");
    assert!(fs::symlink_metadata(dest.join("esc")).is_err());

    // A link already in the destination, pointing out: files are not written through it.
    std::os::unix::fs::symlink(outside.path(), dest.join("pre")).expect("link");
    let (archive, sha) = crafted(scratch.path(), &[(file("pre/evil", b"evil"), b"evil")]);
    let err = unpack(&archive, &sha, &dest).expect_err("pre-existing link");
    assert!(matches!(&err, ArchiveError::Unsafe { reason, .. } if reason.contains("`pre` is a link")), "{err}");
    assert!(names(outside.path()).is_empty());

    // A file replacing a link that points out overwrites the link, not its target.
    write(outside.path(), "target.txt", b"untouched");
    std::os::unix::fs::symlink(outside.path().join("target.txt"), dest.join("swap")).expect("link");
    let (archive, sha) = crafted(scratch.path(), &[(file("swap", b"new"), b"new")]);
    unpack(&archive, &sha, &dest).expect("unpack");
    assert_eq!(fs::read(outside.path().join("target.txt")).expect("read"), b"untouched");
    assert_eq!(fs::read(dest.join("swap")).expect("read"), b"new");
    assert!(!fs::symlink_metadata(dest.join("swap")).expect("stat").file_type().is_symlink());

    // A link already in the destination that stays inside may be written through.
    fs::create_dir_all(dest.join("real")).expect("mkdir");
    std::os::unix::fs::symlink("real", dest.join("alias")).expect("link");
    let (archive, sha) = crafted(scratch.path(), &[(file("alias/x", b"x"), b"x")]);
    unpack(&archive, &sha, &dest).expect("unpack through an inside link");
    assert_eq!(fs::read(dest.join("real/x")).expect("read"), b"x");

    // A file after a link of the same archive: the link is only created after every file.
    let (archive, sha) = crafted(scratch.path(), &[(link("inner", "sub"), b""), (file("inner/f", b"f"), b"f")]);
    let fresh = scratch.path().join("fresh");
    let err = unpack(&archive, &sha, &fresh).expect_err("link over a directory");
    assert!(matches!(err, ArchiveError::Extract { .. }), "{err}");
    assert_eq!(fs::read(fresh.join("inner/f")).expect("written as a plain file"), b"f");
    assert!(names(outside.path()).iter().all(|n| n == "target.txt"));
}

#[cfg(unix)]
#[test]
fn set_id_bits_are_dropped_and_truncated_archives_are_malformed() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dest = scratch.path().join("dest");
    let mut setuid = file("tool", b"#!/bin/sh\n");
    setuid.set_mode(0o4755);
    setuid.set_cksum();
    let (archive, sha) = crafted(scratch.path(), &[(setuid, b"#!/bin/sh\n")]);
    unpack(&archive, &sha, &dest).expect("unpack");
    assert_eq!(mode_of(&fs::metadata(dest.join("tool")).expect("stat")), 0o755);

    // A header promising more bytes than the stream holds.
    let mut tar = file("short", &[0u8; 4096]).as_bytes().to_vec();
    tar.extend_from_slice(&[7u8; 100]);
    let compressed = zstd::encode_all(&tar[..], 3).expect("compress");
    let path = scratch.path().join("short.tar.zst");
    fs::write(&path, &compressed).expect("write");
    let err = unpack(&path, &crate::hex(&Sha256::digest(&compressed)), &dest).expect_err("truncated");
    assert!(matches!(err, ArchiveError::Malformed { .. }), "{err}");
}
