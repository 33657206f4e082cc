//! `hashFiles`: one SHA-256 over the contents of the workspace files matched by globs.
//!
//! Like GitHub Actions' `hashFiles`: the matching regular files are taken in path order, each
//! file's SHA-256 is fed (as 32 raw bytes) into a total SHA-256, and the total is returned in
//! lower-case hex; the empty string means nothing matched. Paths are not part of the hash, so
//! renaming a file keeps it, changing a byte changes it. Selection follows [`mod@crate::select`]:
//! directories matched by a pattern contribute their files, `.git` is ignored, links are not
//! followed and do not contribute.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::select::{EntryKind, SelectError, select};

/// The read buffer: fixed, so memory use does not depend on file sizes.
const BUFFER: usize = 256 * 1024;

/// Why [`hash_files`] failed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// A pattern was refused or the workspace could not be walked.
    #[error(transparent)]
    Select(#[from] SelectError),
    /// A matching file could not be read.
    #[error("cannot read `{}` to hash it: {source}", path.display())]
    Read {
        /// The file (root joined with its relative path).
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Hashes the regular files under `root` matched by `patterns` (see the module docs).
///
/// Files are streamed through a fixed buffer, never read whole into memory.
pub fn hash_files(root: &Path, patterns: &[String]) -> Result<String, HashError> {
    let selection = select(root, patterns)?;
    let mut total = Sha256::new();
    let mut buffer = vec![0u8; BUFFER];
    let mut any = false;
    for entry in selection.entries.iter().filter(|e| e.kind == EntryKind::File) {
        let path = root.join(&entry.path);
        let digest = hash_one(&path, entry.size, &mut buffer).map_err(|source| HashError::Read { path, source })?;
        total.update(digest);
        any = true;
    }
    Ok(if any { crate::hex(&total.finalize()) } else { String::new() })
}

/// Hashes one file, read to its end. `expected` is its size when it was selected: a short read
/// that brings the total to exactly that size is taken as the end, which saves the extra
/// system call that would otherwise only report it (small files are the common case).
fn hash_one(path: &Path, expected: u64, buffer: &mut [u8]) -> io::Result<[u8; 32]> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    loop {
        match file.read(buffer) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buffer[..n]);
                total += n as u64;
                if n < buffer.len() && total == expected {
                    break;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn patterns(list: &[&str]) -> Vec<String> {
        list.iter().map(|p| (*p).to_string()).collect()
    }

    fn write(root: &Path, rel: &str, contents: &[u8]) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("test paths have parents")).expect("create parent");
        fs::write(path, contents).expect("write test file");
    }

    #[test]
    fn stable_and_sensitive_to_contents() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "Cargo.lock", b"lock v1");
        write(dir.path(), "crates/a/Cargo.lock", b"nested lock");
        write(dir.path(), "src/main.rs", b"fn main() {}");
        let pats = patterns(&["**/Cargo.lock"]);
        let first = hash_files(dir.path(), &pats).expect("hash");
        assert_eq!(first.len(), 64);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(hash_files(dir.path(), &pats).expect("hash"), first, "stable across runs");
        write(dir.path(), "src/main.rs", b"fn main() { changed }");
        assert_eq!(hash_files(dir.path(), &pats).expect("hash"), first, "unmatched files do not count");
        write(dir.path(), "crates/a/Cargo.lock", b"nested lock!");
        assert_ne!(hash_files(dir.path(), &pats).expect("hash"), first, "a matched file changed");
    }

    #[test]
    fn matches_the_documented_construction() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "b.txt", b"bee");
        write(dir.path(), "a.txt", b"ay");
        let mut total = Sha256::new();
        total.update(Sha256::digest(b"ay"));
        total.update(Sha256::digest(b"bee"));
        assert_eq!(hash_files(dir.path(), &patterns(&["*.txt"])).expect("hash"), crate::hex(&total.finalize()));
    }

    #[test]
    fn independent_of_creation_order() {
        let one = tempfile::tempdir().expect("tempdir");
        let two = tempfile::tempdir().expect("tempdir");
        let files: [(&str, &[u8]); 4] =
            [("z/last.txt", b"z"), ("a/first.txt", b"a"), ("m.txt", b"m"), ("a/b/deep.txt", b"deep")];
        for (rel, contents) in files {
            write(one.path(), rel, contents);
        }
        for (rel, contents) in files.iter().rev() {
            write(two.path(), rel, contents);
        }
        let pats = patterns(&["**/*.txt"]);
        assert_eq!(hash_files(one.path(), &pats).expect("hash"), hash_files(two.path(), &pats).expect("hash"));
    }

    #[test]
    fn directories_contribute_their_files_and_git_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "deps/x.txt", b"x");
        let before = hash_files(dir.path(), &patterns(&["deps"])).expect("hash");
        assert_eq!(before, hash_files(dir.path(), &patterns(&["deps/x.txt"])).expect("hash"));
        write(dir.path(), "deps/.git/HEAD", b"ref");
        assert_eq!(hash_files(dir.path(), &patterns(&["deps", "**/*"])).expect("hash"), before);
    }

    #[test]
    fn a_file_that_grew_since_selection_is_read_to_its_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("grown.txt");
        fs::write(&path, b"0123456789").expect("write");
        let mut buffer = [0u8; 4];
        let whole: [u8; 32] = Sha256::digest(b"0123456789").into();
        assert_eq!(hash_one(&path, 10, &mut buffer).expect("hash"), whole);
        assert_eq!(hash_one(&path, 4, &mut buffer).expect("hash"), whole, "stale smaller size");
        assert_eq!(hash_one(&path, 2, &mut [0u8; 64]).expect("hash"), whole, "stale smaller size, big buffer");
    }

    #[test]
    fn empty_when_nothing_matches_and_refuses_dotdot() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.txt", b"a");
        assert_eq!(hash_files(dir.path(), &patterns(&["*.lock"])).expect("hash"), "");
        assert_eq!(hash_files(dir.path(), &[]).expect("hash"), "");
        let err = hash_files(dir.path(), &patterns(&["../*.txt"])).expect_err("refused");
        assert!(matches!(err, HashError::Select(SelectError::Pattern { .. })), "{err}");
    }
}
