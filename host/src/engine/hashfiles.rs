//! `hashFiles(patterns...)`: SHA-256 over the sorted files matching globs in the workspace,
//! streamed, `.git` ignored.

use globset::{Glob, GlobSetBuilder};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Hashes the files under `root` matching any of `patterns`; the empty string when none match.
pub fn hash_files(root: &Path, patterns: &[String]) -> Result<String, String> {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        let glob = Glob::new(p).map_err(|e| format!("hashFiles: invalid pattern `{p}`: {}", e.kind()))?;
        builder.add(glob);
    }
    let set = builder.build().map_err(|e| format!("hashFiles: {e}"))?;
    let mut files: Vec<PathBuf> = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("hashFiles: cannot read {}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                if entry.file_name() != ".git" {
                    dirs.push(path);
                }
            } else if kind.is_file()
                && let Ok(rel) = path.strip_prefix(root)
                && set.is_match(rel)
            {
                files.push(rel.to_path_buf());
            }
        }
    }
    if files.is_empty() {
        return Ok(String::new());
    }
    files.sort();
    let mut total = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    for rel in files {
        let mut file =
            File::open(root.join(&rel)).map_err(|e| format!("hashFiles: cannot open {}: {e}", rel.display()))?;
        let mut one = Sha256::new();
        loop {
            let n = file.read(&mut buf).map_err(|e| format!("hashFiles: cannot read {}: {e}", rel.display()))?;
            if n == 0 {
                break;
            }
            one.update(&buf[..n]);
        }
        total.update(one.finalize());
    }
    Ok(hex(&total.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_matching_files_ignoring_git() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/.git")).unwrap();
        std::fs::write(dir.path().join("a/Cargo.lock"), "x").unwrap();
        std::fs::write(dir.path().join("a/.git/Cargo.lock"), "y").unwrap();
        let first = hash_files(dir.path(), &["**/Cargo.lock".into()]).unwrap();
        assert_eq!(first.len(), 64);
        std::fs::write(dir.path().join("a/.git/Cargo.lock"), "changed").unwrap();
        assert_eq!(hash_files(dir.path(), &["**/Cargo.lock".into()]).unwrap(), first);
        std::fs::write(dir.path().join("a/Cargo.lock"), "changed").unwrap();
        assert_ne!(hash_files(dir.path(), &["**/Cargo.lock".into()]).unwrap(), first);
        assert_eq!(hash_files(dir.path(), &["*.none".into()]).unwrap(), "");
    }
}
