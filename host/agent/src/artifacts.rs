//! Build artifacts: the storage trait and its local, content-addressed implementation (cap-std,
//! so nothing escapes the data directory), collecting a job's `artifacts:` from its workspace,
//! and placing upstream artifacts into a downstream job's workspace (checksums verified).

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use chengis_archive::select::{EntryKind, select};
use chengis_model::records::{ArtifactFile, NewArtifactFile};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;
use thiserror::Error;

/// What went wrong with an artifact.
#[derive(Debug, Error)]
pub enum ArtifactError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file (relative to the workspace or the store).
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A pattern that selects outside the workspace, or does not parse.
    #[error("artifact `{name}`: {source}")]
    Select {
        /// The artifact.
        name: String,
        /// The cause.
        source: chengis_archive::select::SelectError,
    },
    /// The job's artifacts are over the size cap.
    #[error("artifacts are {total} bytes, over the limit of {limit} bytes per job (at `{name}`)")]
    TooLarge {
        /// The artifact that crossed the cap.
        name: String,
        /// The bytes collected with it.
        total: u64,
        /// The cap.
        limit: u64,
    },
    /// Stored content that does not match its checksum.
    #[error("artifact file {path} is corrupt: its checksum is {actual}, expected {expected}")]
    Corrupt {
        /// The file.
        path: String,
        /// The recorded SHA-256.
        expected: String,
        /// What the content hashes to.
        actual: String,
    },
    /// A blob name that is not a SHA-256.
    #[error("`{0}` is not a SHA-256 digest")]
    BadDigest(String),
}

fn io(what: &'static str, path: impl Into<String>) -> impl FnOnce(std::io::Error) -> ArtifactError {
    let path = path.into();
    move |source| ArtifactError::Io { what, path, source }
}

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// SHA-256 of the content (lower hex): its name.
    pub sha256: String,
    /// Its size.
    pub size: u64,
}

/// Where artifact content lives, by SHA-256.
pub trait BlobStore: Send + Sync {
    /// Stores everything `src` yields; the same content is stored once.
    fn put(&self, src: &mut dyn Read) -> Result<Blob, ArtifactError>;
    /// Opens a blob for reading.
    fn open(&self, sha256: &str) -> Result<std::fs::File, ArtifactError>;
    /// Deletes a blob; false when there was none.
    fn delete(&self, sha256: &str) -> Result<bool, ArtifactError>;
    /// Every blob: digest, modification time, size.
    fn list(&self) -> Result<Vec<(String, SystemTime, u64)>, ArtifactError>;
}

/// Blobs as files `ab/abcdef...` under one directory, opened once as a capability.
#[derive(Debug)]
pub struct LocalBlobs {
    dir: Dir,
    root: PathBuf,
}

fn check_digest(sha256: &str) -> Result<(), ArtifactError> {
    if sha256.len() == 64 && sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(ArtifactError::BadDigest(sha256.chars().take(80).collect()))
    }
}

fn blob_path(sha256: &str) -> String {
    format!("{}/{sha256}", &sha256[..2])
}

/// Copies `src` to `dst` through a 1 MiB buffer, hashing; returns (sha256, bytes).
pub fn copy_hashing(src: &mut dyn Read, dst: &mut dyn Write, path: &str) -> Result<(String, u64), ArtifactError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io("cannot read", path)(e)),
        };
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(io("cannot write", path))?;
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

impl LocalBlobs {
    /// Opens (creating) the store at `root`.
    pub fn open(root: &Path) -> Result<LocalBlobs, ArtifactError> {
        let shown = root.display().to_string();
        std::fs::create_dir_all(root.join("tmp")).map_err(io("cannot create", shown.clone()))?;
        let dir = Dir::open_ambient_dir(root, ambient_authority()).map_err(io("cannot open", shown))?;
        Ok(LocalBlobs { dir, root: root.to_path_buf() })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Moves `tmp` (a path relative to the store, under its `tmp/`), whose content is known to
    /// have SHA-256 `sha256`, into place as that blob; the file is removed if it cannot be.
    pub fn adopt(&self, tmp: &str, sha256: &str, size: u64) -> Result<Blob, ArtifactError> {
        check_digest(sha256)?;
        let dest = blob_path(sha256);
        let moved = self
            .dir
            .create_dir_all(&sha256[..2])
            .and_then(|()| self.dir.rename(tmp, &self.dir, &dest))
            .map_err(io("cannot store", dest));
        if moved.is_err() {
            let _ = self.dir.remove_file(tmp);
        }
        moved?;
        Ok(Blob { sha256: sha256.to_string(), size })
    }
}

impl BlobStore for LocalBlobs {
    fn put(&self, src: &mut dyn Read) -> Result<Blob, ArtifactError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tmp = format!(
            "tmp/{}-{}-{}",
            std::process::id(),
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut file = self.dir.create(&tmp).map_err(io("cannot create", tmp.clone()))?;
        let written = copy_hashing(src, &mut file, &tmp).and_then(|r| {
            file.flush().map_err(io("cannot write", tmp.clone()))?;
            Ok(r)
        });
        drop(file);
        let (sha256, size) = match written {
            Ok(r) => r,
            Err(e) => {
                let _ = self.dir.remove_file(&tmp);
                return Err(e);
            }
        };
        self.adopt(&tmp, &sha256, size)
    }

    fn open(&self, sha256: &str) -> Result<std::fs::File, ArtifactError> {
        check_digest(sha256)?;
        let path = blob_path(sha256);
        Ok(self.dir.open(&path).map_err(io("cannot open", path))?.into_std())
    }

    fn delete(&self, sha256: &str) -> Result<bool, ArtifactError> {
        check_digest(sha256)?;
        match self.dir.remove_file(blob_path(sha256)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("cannot delete", blob_path(sha256))(e)),
        }
    }

    fn list(&self) -> Result<Vec<(String, SystemTime, u64)>, ArtifactError> {
        let mut out = Vec::new();
        for shard in self.dir.entries().map_err(io("cannot list", "artifacts"))?.flatten() {
            let name = shard.file_name().to_string_lossy().to_string();
            if name.len() != 2 || !shard.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(sub) = shard.open_dir() else { continue };
            for e in sub.entries().map_err(io("cannot list", name.clone()))?.flatten() {
                let sha = e.file_name().to_string_lossy().to_string();
                if check_digest(&sha).is_err() {
                    continue;
                }
                let Ok(meta) = e.metadata() else { continue };
                let modified = meta.modified().map(|t| t.into_std()).unwrap_or(SystemTime::UNIX_EPOCH);
                out.push((sha, modified, meta.len()));
            }
        }
        Ok(out)
    }
}

/// Streams a blob into `dst`, checking its content against `sha256`; returns the bytes.
pub fn copy_verified(
    blobs: &dyn BlobStore,
    sha256: &str,
    dst: &mut dyn Write,
    shown: &str,
) -> Result<u64, ArtifactError> {
    let mut file = blobs.open(sha256)?;
    let (actual, n) = copy_hashing(&mut file, dst, shown)?;
    if actual != sha256 {
        return Err(ArtifactError::Corrupt { path: shown.to_string(), expected: sha256.to_string(), actual });
    }
    Ok(n)
}

/// Checks a blob's content against its name without copying it.
pub fn verify(blobs: &dyn BlobStore, sha256: &str, shown: &str) -> Result<u64, ArtifactError> {
    copy_verified(blobs, sha256, &mut std::io::sink(), shown)
}

/// One `artifacts:` entry of a job, rendered.
#[derive(Debug, Clone)]
pub struct ArtifactSpec {
    /// Its name.
    pub name: String,
    /// Path patterns relative to the workspace.
    pub paths: Vec<String>,
    /// When it expires.
    pub expires_ms: Option<i64>,
}

/// What collecting found.
#[derive(Debug, Default)]
pub struct Collected {
    /// The stored files.
    pub files: Vec<NewArtifactFile>,
    /// Things the log should say (skipped symlinks, artifacts over the cap, empty patterns).
    pub warnings: Vec<String>,
    /// Bytes stored.
    pub bytes: u64,
}

/// Collects the artifacts' files from `workspace` into `blobs`. Symlinks are followed only
/// inside the workspace (the workspace is opened as a capability, which refuses the rest).
/// Over `limit` the job fails (`fail_over_cap`) or the artifact that crossed it is left out
/// with a warning.
pub fn collect(
    blobs: &dyn BlobStore,
    workspace: &Path,
    specs: &[ArtifactSpec],
    limit: u64,
    fail_over_cap: bool,
) -> Result<Collected, ArtifactError> {
    let ws = Dir::open_ambient_dir(workspace, ambient_authority())
        .map_err(io("cannot open the workspace", workspace.display().to_string()))?;
    let mut out = Collected::default();
    for spec in specs {
        let selection = select(workspace, &spec.paths)
            .map_err(|source| ArtifactError::Select { name: spec.name.clone(), source })?;
        for (path, why) in &selection.skipped {
            out.warnings.push(format!("artifact `{}`: skipped {}: {why}", spec.name, path.display()));
        }
        let mut files = Vec::new();
        let mut bytes = 0u64;
        for entry in &selection.entries {
            if matches!(entry.kind, EntryKind::Dir) {
                continue;
            }
            let rel = entry.path.to_string_lossy().to_string();
            let mut file = match ws.open(&entry.path) {
                Ok(f) => f,
                Err(e) => {
                    out.warnings.push(format!("artifact `{}`: skipped {rel}: {e}", spec.name));
                    continue;
                }
            };
            if file.metadata().is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let blob = blobs.put(&mut file)?;
            bytes += blob.size;
            files.push(NewArtifactFile {
                name: spec.name.clone(),
                path: rel,
                size: i64::try_from(blob.size).unwrap_or(i64::MAX),
                sha256: blob.sha256,
                expires_ms: spec.expires_ms,
            });
        }
        if files.is_empty() {
            out.warnings.push(format!("artifact `{}`: no file matches {}", spec.name, spec.paths.join(", ")));
        }
        if out.bytes + bytes > limit {
            let err = ArtifactError::TooLarge { name: spec.name.clone(), total: out.bytes + bytes, limit };
            if fail_over_cap {
                return Err(err);
            }
            out.warnings.push(format!("{err}; `{}` was not kept", spec.name));
            continue;
        }
        out.bytes += bytes;
        out.files.extend(files);
    }
    Ok(out)
}

/// Places artifact files into `workspace` at their paths (through the workspace capability, so
/// a recorded path cannot leave it), verifying each checksum; returns the bytes written.
pub fn place(blobs: &dyn BlobStore, workspace: &Path, files: &[ArtifactFile]) -> Result<u64, ArtifactError> {
    let ws = Dir::open_ambient_dir(workspace, ambient_authority())
        .map_err(io("cannot open the workspace", workspace.display().to_string()))?;
    let mut total = 0;
    for f in files {
        let rel = Path::new(&f.path);
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            ws.create_dir_all(parent).map_err(io("cannot create", parent.display().to_string()))?;
        }
        let mut out = ws.create(rel).map_err(io("cannot create", f.path.clone()))?;
        match copy_verified(blobs, &f.sha256, &mut out, &f.path) {
            Ok(n) => total += n,
            Err(e) => {
                drop(out);
                let _ = ws.remove_file(rel);
                return Err(e);
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, paths: &[&str]) -> ArtifactSpec {
        ArtifactSpec { name: name.into(), paths: paths.iter().map(|p| p.to_string()).collect(), expires_ms: None }
    }

    #[test]
    fn collects_and_places_with_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(ws.join("dist/sub")).unwrap();
        std::fs::write(ws.join("dist/app"), b"binary").unwrap();
        std::fs::write(ws.join("dist/sub/readme.txt"), b"hello").unwrap();
        std::fs::write(dir.path().join("secret"), b"outside").unwrap();
        std::os::unix::fs::symlink("../secret", ws.join("dist/escape")).unwrap();
        std::os::unix::fs::symlink("app", ws.join("dist/inside")).unwrap();
        let blobs = LocalBlobs::open(&dir.path().join("store")).unwrap();
        let got = collect(&blobs, &ws, &[spec("dist", &["dist/"])], 1 << 20, true).unwrap();
        let mut paths: Vec<&str> = got.files.iter().map(|f| f.path.as_str()).collect();
        paths.sort();
        assert_eq!(paths, ["dist/app", "dist/inside", "dist/sub/readme.txt"], "{:?}", got.warnings);
        assert!(got.warnings.iter().any(|w| w.contains("dist/escape")), "{:?}", got.warnings);
        // The same content is one blob.
        assert_eq!(blobs.list().unwrap().len(), 2);

        let down = dir.path().join("down");
        std::fs::create_dir_all(&down).unwrap();
        let rows: Vec<ArtifactFile> = got
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| ArtifactFile {
                id: i as i64,
                build_id: 1,
                job: "build".into(),
                name: f.name.clone(),
                path: f.path.clone(),
                size: f.size,
                sha256: f.sha256.clone(),
                created_ms: 0,
                expires_ms: None,
            })
            .collect();
        assert_eq!(place(&blobs, &down, &rows).unwrap(), 17, "app, inside (app's content) and readme");
        assert_eq!(std::fs::read(down.join("dist/sub/readme.txt")).unwrap(), b"hello");

        // A corrupted blob is refused on the way out, and the half-written file is removed.
        let sha = &rows.iter().find(|r| r.path == "dist/app").unwrap().sha256;
        std::fs::write(blobs.root().join(blob_path(sha)), b"tampered").unwrap();
        let again = dir.path().join("again");
        std::fs::create_dir_all(&again).unwrap();
        let err = place(&blobs, &again, &rows).unwrap_err();
        assert!(matches!(err, ArtifactError::Corrupt { .. }), "{err}");
        assert!(!again.join("dist/app").exists());
    }

    #[test]
    fn refuses_paths_leaving_the_workspace_and_enforces_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(ws.join("big"), vec![7u8; 4096]).unwrap();
        let blobs = LocalBlobs::open(&dir.path().join("store")).unwrap();
        let err = collect(&blobs, &ws, &[spec("x", &["../etc/passwd"])], 1 << 20, true).unwrap_err();
        assert!(err.to_string().contains(".."), "{err}");
        let err = collect(&blobs, &ws, &[spec("x", &["/etc/passwd"])], 1 << 20, true).unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
        let err = collect(&blobs, &ws, &[spec("big", &["big"])], 1000, true).unwrap_err();
        assert!(matches!(err, ArtifactError::TooLarge { total: 4096, limit: 1000, .. }), "{err}");
        let warned = collect(&blobs, &ws, &[spec("big", &["big"])], 1000, false).unwrap();
        assert!(warned.files.is_empty() && warned.warnings[0].contains("not kept"), "{:?}", warned.warnings);
        assert!(matches!(blobs.open("../../etc/passwd"), Err(ArtifactError::BadDigest(_))));
    }
}
