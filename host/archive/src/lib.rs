//! Workspace files for caches and artifacts: glob selection, `hashFiles`, tar + zstd archives.
//!
//! Build caches and build artifacts both start from a set of workspace files picked by globs,
//! and both end as one compressed archive with a SHA-256 checksum that is checked again before
//! anything is restored. This crate owns that path and nothing else (no storage, no database).
//!
//! # Layout
//! - [`mod@select`]: globs relative to a workspace root to a sorted [`Selection`] of files,
//!   directories and symbolic links; `!pattern` excludes, `.git` is never entered, links that
//!   leave the workspace are skipped and reported.
//! - [`hash`]: [`hash_files`], a GitHub-Actions-like `hashFiles` over the selected files.
//! - [`tarzst`]: [`pack`] a selection into a tar + zstd temporary file (checksum and size
//!   computed while writing), [`persist`] it atomically (first writer wins), [`verify`] a
//!   checksum, and [`unpack`] an archive (checksum first, then a guarded extraction). Packing
//!   runs three threads and unpacking two, like a `tar | zstd` pipeline; all are joined before
//!   the call returns.
//!
//! # Public API
//! ```text
//! select(root: &Path, patterns: &[String]) -> Result<Selection, SelectError>
//! hash_files(root: &Path, patterns: &[String]) -> Result<String, HashError>
//! pack(root: &Path, selection: &Selection, out_dir: &Path, limits: PackLimits) -> Result<Packed, ArchiveError>
//! persist(packed: Packed, dest: &Path) -> Result<Persisted, ArchiveError>
//! verify(path: &Path, sha256: &str) -> Result<u64, ArchiveError>
//! unpack(archive: &Path, sha256: &str, dest: &Path) -> Result<Unpacked, ArchiveError>
//! ```
//!
//! # Example
//! ```no_run
//! use std::path::Path;
//! use chengis_archive::{PackLimits, Persisted, pack, persist, select, unpack};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let workspace = Path::new("/work/ws");
//! let selection = select(workspace, &["target/".to_string(), "!target/tmp".to_string()])?;
//! for (path, reason) in &selection.skipped {
//!     eprintln!("warning: skipped {}: {reason}", path.display());
//! }
//! let packed = pack(workspace, &selection, Path::new("/var/cache/chengis"), PackLimits::default())?;
//! let sha256 = packed.sha256.clone();
//! match persist(packed, Path::new("/var/cache/chengis/deps-1234.tar.zst"))? {
//!     Persisted::Written => {}
//!     Persisted::AlreadyExists => { /* another job saved the same key first */ }
//! }
//! unpack(Path::new("/var/cache/chengis/deps-1234.tar.zst"), &sha256, Path::new("/work/ws2"))?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod hash;
mod pipe;
pub mod select;
pub mod tarzst;

pub use hash::{HashError, hash_files};
pub use select::{Entry, EntryKind, SelectError, Selection, select};
pub use tarzst::{ArchiveError, PackLimits, Packed, Persisted, Unpacked, pack, persist, unpack, verify};

/// Lower-case hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}
