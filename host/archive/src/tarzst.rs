//! tar + zstd archives: packing a selection, first-writer-wins persistence, checksum
//! verification, and guarded extraction.
//!
//! # Format
//! A plain tar stream (GNU headers, long names as GNU extensions) compressed as one zstd frame.
//! Entries come in selection order with relative paths, owner 0:0, the file's permission bits
//! and modification time; links are stored as links. The same files with the same metadata
//! give the same bytes, so two jobs packing the same key produce the same checksum.
//!
//! # Integrity
//! [`pack`] computes the SHA-256 and the size of the compressed bytes as they are written (no
//! second read). [`unpack`] checks the SHA-256 before anything is written to the destination, so
//! a corrupt archive leaves the destination untouched.
//!
//! # Extraction guards
//! - Only regular files, directories and symbolic links are extracted; absolute paths and `..`
//!   components are refused.
//! - Files are created anew, never opened through whatever is at their path (an existing file
//!   or link there is unlinked first).
//! - Every directory on the way to a file is checked once: missing (it is created), a real
//!   directory, or a link already in the destination that resolves inside it. Anything else
//!   stops the extraction.
//! - Links from the archive are created only after every file is written, so no file of the
//!   archive can be written through a link of the same archive, and a link is refused unless its
//!   target stays inside the destination by the rules of [`mod@crate::select`], judged from the
//!   real directory it lands in. Directories and links are placed by the `tar` crate, which
//!   checks each one's real parent directory again.
//! - Permission bits are restored without set-id and sticky bits, file modification times are
//!   restored, ownership is not.
//!
//! These guards assume nobody else changes the destination during the extraction, and [`pack`]
//! assumes the same of the workspace: it notices a file swapped for a link after selection, but
//! not a parent directory swapped for one.
//!
//! # Speed
//! Like `tar | zstd > file`, packing runs in three threads: one walks, reads and frames the
//! files, one compresses, one hashes and writes. Unpacking verifies the checksum first, then
//! decompresses in one thread while another writes the files. Reads and writes use 1 MiB
//! buffers and regular files cost one `open`, the writes, one `fchmod`, one `futimens` and one
//! `close` each.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::{self, File, FileTimes, Metadata};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};
use tempfile::NamedTempFile;

use crate::pipe::{PipeReader, PipeWriter, pipe};
use crate::select::{Entry, EntryKind, Selection, link_target_problem};

/// Reads of source files and of archives go through buffers of this size.
const READ_BUFFER: usize = 1 << 20;
/// The tar stream and the compressed stream cross between threads in chunks of this size...
const PIPE_CHUNK: usize = 1 << 20;
/// ...with at most this many in flight.
const PIPE_DEPTH: usize = 4;

/// How [`pack`] compresses, and how large the compressed archive may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackLimits {
    /// The zstd level (3 by default, like the `zstd` command line).
    pub level: i32,
    /// The most compressed bytes the archive may hold; packing stops with
    /// [`ArchiveError::TooLarge`] as soon as it would grow past this.
    pub max_bytes: Option<u64>,
}

impl Default for PackLimits {
    fn default() -> Self {
        Self { level: 3, max_bytes: None }
    }
}

/// A packed archive in a temporary file, deleted on drop unless [`persist`]ed.
#[derive(Debug)]
pub struct Packed {
    /// The temporary file, in the `out_dir` given to [`pack`].
    pub file: NamedTempFile,
    /// The SHA-256 of the compressed bytes, in lower-case hex.
    pub sha256: String,
    /// The size of the compressed archive in bytes.
    pub size: u64,
    /// The number of regular files in the archive.
    pub files: u64,
}

/// What [`persist`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persisted {
    /// The archive is now at the destination.
    Written,
    /// Something was already at the destination (the first writer wins); it was left alone and
    /// the temporary file was removed.
    AlreadyExists,
}

/// What [`unpack`] extracted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unpacked {
    /// The number of regular files written.
    pub files: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// Why packing, persisting, verifying or unpacking failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The zstd level is outside what the library supports.
    #[error("zstd level {level} is out of range ({min} to {max})")]
    Level {
        /// The level asked for.
        level: i32,
        /// The lowest supported level.
        min: i32,
        /// The highest supported level.
        max: i32,
    },
    /// The temporary archive could not be created.
    #[error("cannot create a temporary archive in `{}`: {source}", dir.display())]
    TempFile {
        /// The directory it was to be created in.
        dir: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A workspace file or an archive could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A workspace path changed between selection and packing.
    #[error("`{}` changed while it was being packed: {reason}", path.display())]
    Changed {
        /// The path.
        path: PathBuf,
        /// What changed.
        reason: String,
    },
    /// The archive could not be written.
    #[error("cannot write the archive `{}`: {source}", path.display())]
    Write {
        /// The archive (temporary) file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The compressed archive would be larger than [`PackLimits::max_bytes`]; nothing was kept.
    #[error(
        "the compressed archive would exceed its limit of {limit} bytes (the selection holds {selected_bytes} \
         bytes before compression)"
    )]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
        /// The total size of the selected files.
        selected_bytes: u64,
    },
    /// The archive could not be moved to its destination.
    #[error("cannot move the archive to `{}`: {source}", path.display())]
    Persist {
        /// The destination.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// An expected checksum is not 64 lower-case hex digits.
    #[error("`{value}` is not a SHA-256 checksum (64 lower-case hex digits)")]
    BadChecksum {
        /// The value given.
        value: String,
    },
    /// The archive's SHA-256 is not the expected one.
    #[error("`{}` is corrupt: expected SHA-256 {expected}, found {actual}", path.display())]
    Corrupt {
        /// The archive.
        path: PathBuf,
        /// The checksum asked for.
        expected: String,
        /// The checksum of the bytes on disk.
        actual: String,
    },
    /// The archive passed its checksum but is not a readable tar + zstd stream.
    #[error("`{}` is not a valid tar + zstd archive: {source}", path.display())]
    Malformed {
        /// The archive.
        path: PathBuf,
        /// The decoder's complaint.
        source: io::Error,
    },
    /// An entry was refused by the extraction guards (see the module docs).
    #[error("refusing entry `{}` of `{}`: {reason}", entry.display(), archive.display())]
    Unsafe {
        /// The archive.
        archive: PathBuf,
        /// The entry's path as stored.
        entry: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// The destination directory could not be created or resolved.
    #[error("cannot create the destination `{}`: {source}", path.display())]
    Destination {
        /// The destination directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A pipeline thread could not be started.
    #[error("cannot start a worker thread: {source}")]
    Thread {
        /// The underlying error.
        source: io::Error,
    },
    /// An entry could not be written into the destination.
    #[error("cannot extract `{}` from `{}` into `{}`: {source}", entry.display(), archive.display(), dest.display())]
    Extract {
        /// The archive.
        archive: PathBuf,
        /// The entry's path relative to the destination.
        entry: PathBuf,
        /// The destination directory.
        dest: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Packs `selection` (paths relative to `root`) into a new temporary file in `out_dir`.
///
/// The temporary file is removed on any error, including [`ArchiveError::TooLarge`]. Use
/// [`persist`] to move the result to its final name on the same filesystem.
pub fn pack(root: &Path, selection: &Selection, out_dir: &Path, limits: PackLimits) -> Result<Packed, ArchiveError> {
    let levels = zstd::compression_level_range();
    if !levels.contains(&limits.level) {
        return Err(ArchiveError::Level { level: limits.level, min: *levels.start(), max: *levels.end() });
    }
    let file = tempfile::Builder::new()
        .prefix(".chengis-archive-")
        .suffix(".tar.zst.part")
        .tempfile_in(out_dir)
        .map_err(|source| ArchiveError::TempFile { dir: out_dir.to_path_buf(), source })?;
    let written = write_archive(root, selection, file.as_file(), file.path(), limits)?;
    Ok(Packed { file, sha256: written.sha256, size: written.size, files: written.files })
}

/// What [`write_archive`] produced.
struct Written {
    sha256: String,
    size: u64,
    files: u64,
}

fn write_archive(
    root: &Path,
    selection: &Selection,
    out: &File,
    out_path: &Path,
    limits: PackLimits,
) -> Result<Written, ArchiveError> {
    let (tar_writer, tar_reader) = pipe(PIPE_CHUNK, PIPE_DEPTH);
    let (zst_writer, zst_reader) = pipe(PIPE_CHUNK, PIPE_DEPTH);
    // Three stages, as in `tar | zstd > file`: this thread walks, reads and frames the files;
    // one compresses (the bottleneck, so it does nothing else); one hashes and writes.
    // If a spawn fails, the pipe ends owned by the failed closure are dropped, so the stages
    // already running see their pipes break and end; the scope then joins them.
    let (tarred, compressed, stored) = std::thread::scope(|scope| {
        let compressor = spawn(scope, "chengis-zstd", move || compress(tar_reader, zst_writer, limits))?;
        let writer = spawn(scope, "chengis-store", move || store(zst_reader, out))?;
        let tarred = write_tar(root, selection, tar_writer);
        Ok((tarred, joined(compressor), joined(writer)))
    })
    .map_err(|source| ArchiveError::Thread { source })?;
    let write_error = |source| ArchiveError::Write { path: out_path.to_path_buf(), source };
    // When a stage fails, the stages next to it only see the pipe between them break: report
    // the first real cause.
    let downstream_gone = |err: &io::Error| err.kind() == io::ErrorKind::BrokenPipe;
    let upstream_gone = |err: &io::Error| err.kind() == io::ErrorKind::UnexpectedEof;
    match (tarred, compressed, stored) {
        (Ok(files), Ok(()), Ok((sha256, size))) => Ok(Written { sha256, size, files }),
        (Err(Failure::Source(err)), _, _) => Err(err),
        (_, Err(CompressFailure { exceeded: true, .. }), _) => Err(ArchiveError::TooLarge {
            limit: limits.max_bytes.unwrap_or_default(),
            selected_bytes: selection.total_bytes,
        }),
        (_, _, Err(err)) if !upstream_gone(&err) => Err(write_error(err)),
        (_, Err(CompressFailure { source, .. }), _) if !downstream_gone(&source) && !upstream_gone(&source) => {
            Err(write_error(source))
        }
        (Err(Failure::Output(err)), _, _) => Err(write_error(err)),
        (_, Err(CompressFailure { source, .. }), _) => Err(write_error(source)),
        (_, _, Err(err)) => Err(write_error(err)),
    }
}

/// Starts a named pipeline stage.
fn spawn<'scope, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    name: &str,
    stage: impl FnOnce() -> T + Send + 'scope,
) -> io::Result<std::thread::ScopedJoinHandle<'scope, T>> {
    std::thread::Builder::new().name(name.to_string()).spawn_scoped(scope, stage)
}

/// The result of a pipeline stage; a panic in it (a bug) is passed on.
fn joined<T>(stage: std::thread::ScopedJoinHandle<'_, T>) -> T {
    stage.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Frames the selection as a tar stream into `writer`; returns the number of files.
fn write_tar(root: &Path, selection: &Selection, writer: PipeWriter) -> Result<u64, Failure> {
    let mut builder = tar::Builder::new(writer);
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut files = 0u64;
    for entry in &selection.entries {
        append_entry(&mut builder, root, entry, &mut buffer)?;
        if entry.kind == EntryKind::File {
            files += 1;
        }
    }
    builder.into_inner().and_then(PipeWriter::finish).map_err(Failure::Output)?;
    Ok(files)
}

/// Why the compressor stopped.
struct CompressFailure {
    /// Whether it was the size limit.
    exceeded: bool,
    /// The error.
    source: io::Error,
}

/// Compresses the tar stream from `reader` into `writer`, stopping as soon as the compressed
/// size would pass the limit.
fn compress(mut reader: PipeReader, writer: PipeWriter, limits: PackLimits) -> Result<(), CompressFailure> {
    let exceeded = Cell::new(false);
    let limited = Limited { inner: writer, written: 0, limit: limits.max_bytes, exceeded: &exceeded };
    let run = || -> io::Result<()> {
        let mut encoder = zstd::stream::write::Encoder::new(limited, limits.level)?;
        loop {
            let chunk = reader.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len();
            encoder.write_all(chunk)?;
            reader.consume(n);
        }
        encoder.finish()?.inner.finish()
    };
    run().map_err(|source| CompressFailure { exceeded: exceeded.get(), source })
}

/// Writes the compressed stream from `reader` to `out`, hashing it on the way; returns the
/// SHA-256 (lower-case hex) and the size.
fn store(mut reader: PipeReader, mut out: &File) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        out.write_all(chunk)?;
        hasher.update(chunk);
        let n = chunk.len();
        size += n as u64;
        reader.consume(n);
    }
    Ok((crate::hex(&hasher.finalize()), size))
}

/// Which side of the copy failed while adding an entry.
enum Failure {
    /// The workspace side: already a complete error.
    Source(ArchiveError),
    /// The archive side.
    Output(io::Error),
}

fn mode_of(meta: &Metadata) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o7777
    }
    #[cfg(not(unix))]
    {
        if meta.is_dir() { 0o755 } else { 0o644 }
    }
}

fn mtime_of(meta: &Metadata) -> u64 {
    meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs())
}

/// Whether two metadata records describe the same file (not merely equal contents).
fn same_file(a: &Metadata, b: &Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        a.dev() == b.dev() && a.ino() == b.ino()
    }
    #[cfg(not(unix))]
    {
        a.len() == b.len()
    }
}

fn header(kind: EntryType, size: u64, meta: &Metadata, mode: u32) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(mtime_of(meta));
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn append_entry<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    entry: &Entry,
    buffer: &mut [u8],
) -> Result<(), Failure> {
    let path = root.join(&entry.path);
    let read_error = |source: io::Error| Failure::Source(ArchiveError::Read { path: path.clone(), source });
    let changed = |reason: &str| Failure::Source(ArchiveError::Changed { path: path.clone(), reason: reason.into() });
    // `lstat` first: what is packed must still be what was selected, and a file must not have
    // been swapped for a link (which `open` would follow) in between.
    let before = fs::symlink_metadata(&path).map_err(read_error)?;
    match &entry.kind {
        EntryKind::Dir => {
            if !before.is_dir() {
                return Err(changed("it is no longer a directory"));
            }
            let mut header = header(EntryType::Directory, 0, &before, mode_of(&before));
            builder.append_data(&mut header, &entry.path, io::empty()).map_err(Failure::Output)
        }
        EntryKind::Symlink(target) => {
            if !before.file_type().is_symlink() || fs::read_link(&path).map_err(read_error)? != *target {
                return Err(changed("the symbolic link was replaced"));
            }
            let mut header = header(EntryType::Symlink, 0, &before, 0o777);
            builder.append_link(&mut header, &entry.path, target).map_err(Failure::Output)
        }
        EntryKind::File => {
            if !before.is_file() {
                return Err(changed("it is no longer a regular file"));
            }
            let file = File::open(&path).map_err(read_error)?;
            let meta = file.metadata().map_err(read_error)?;
            if !same_file(&before, &meta) {
                return Err(changed("it was replaced while it was being opened"));
            }
            let mut header = header(EntryType::Regular, meta.len(), &meta, mode_of(&meta));
            let mut reader = SourceReader { file, buffer, start: 0, end: 0, remaining: meta.len(), fault: None };
            match builder.append_data(&mut header, &entry.path, &mut reader) {
                Ok(()) => Ok(()),
                Err(err) => Err(match reader.fault.take() {
                    Some(SourceFault::Shrank) => changed("it shrank while it was being packed"),
                    Some(SourceFault::Io(source)) => read_error(source),
                    None => Failure::Output(err),
                }),
            }
        }
    }
}

/// Why a [`SourceReader`] failed.
enum SourceFault {
    /// The file ended before the size recorded in its header.
    Shrank,
    /// Reading failed.
    Io(io::Error),
}

/// Reads exactly the `remaining` bytes of a workspace file through a large shared buffer, so
/// the 8 KiB chunks `tar` asks for do not each cost a system call; faults are kept aside so they
/// can be told apart from archive-side errors.
struct SourceReader<'a> {
    file: File,
    buffer: &'a mut [u8],
    start: usize,
    end: usize,
    remaining: u64,
    fault: Option<SourceFault>,
}

impl Read for SourceReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end {
            if self.remaining == 0 {
                return Ok(0);
            }
            let want = usize::try_from(self.remaining).map_or(self.buffer.len(), |r| r.min(self.buffer.len()));
            let got = loop {
                match self.file.read(&mut self.buffer[..want]) {
                    Ok(0) => {
                        self.fault = Some(SourceFault::Shrank);
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "source file shrank"));
                    }
                    Ok(n) => break n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        let kind = err.kind();
                        self.fault = Some(SourceFault::Io(err));
                        return Err(io::Error::new(kind, "cannot read source file"));
                    }
                }
            };
            self.start = 0;
            self.end = got;
            self.remaining -= got as u64;
        }
        let n = out.len().min(self.end - self.start);
        out[..n].copy_from_slice(&self.buffer[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

/// Counts the compressed bytes and refuses any that would pass the size limit.
struct Limited<'a, W> {
    inner: W,
    written: u64,
    limit: Option<u64>,
    exceeded: &'a Cell<bool>,
}

impl<W: Write> Write for Limited<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(limit) = self.limit
            && self.written + buf.len() as u64 > limit
        {
            self.exceeded.set(true);
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, "the archive size limit was reached"));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Moves a packed archive to `dest` atomically, unless something is already there.
///
/// The data is flushed to disk first and the directory entry after, so a [`Persisted::Written`]
/// archive survives a crash. When several writers race for one `dest`, exactly one gets
/// [`Persisted::Written`]; the others get [`Persisted::AlreadyExists`] and their temporary
/// files are removed. Copy [`Packed::sha256`] before calling: it is what [`unpack`] needs.
pub fn persist(packed: Packed, dest: &Path) -> Result<Persisted, ArchiveError> {
    let Packed { file, .. } = packed;
    file.as_file().sync_all().map_err(|source| ArchiveError::Write { path: file.path().to_path_buf(), source })?;
    match file.persist_noclobber(dest) {
        Ok(_) => {
            let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            sync_dir(parent).map_err(|source| ArchiveError::Persist { path: dest.to_path_buf(), source })?;
            Ok(Persisted::Written)
        }
        Err(err) if err.error.kind() == io::ErrorKind::AlreadyExists => Ok(Persisted::AlreadyExists),
        Err(err) => Err(ArchiveError::Persist { path: dest.to_path_buf(), source: err.error }),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

fn check_checksum(value: &str) -> Result<(), ArchiveError> {
    if value.len() == 64 && value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(ArchiveError::BadChecksum { value: value.to_string() })
    }
}

/// Checks that the SHA-256 of the file at `path` is `sha256` (lower-case hex) and returns its
/// size. The file is streamed, never read whole.
pub fn verify(path: &Path, sha256: &str) -> Result<u64, ArchiveError> {
    check_checksum(sha256)?;
    let mut file = File::open(path).map_err(|source| ArchiveError::Read { path: path.to_path_buf(), source })?;
    verify_open(&mut file, path, sha256)
}

fn verify_open(file: &mut File, path: &Path, expected: &str) -> Result<u64, ArchiveError> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut size = 0u64;
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buffer[..n]);
                size += n as u64;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(ArchiveError::Read { path: path.to_path_buf(), source }),
        }
    }
    let actual = crate::hex(&hasher.finalize());
    if actual.as_bytes() == expected.as_bytes() {
        Ok(size)
    } else {
        Err(ArchiveError::Corrupt { path: path.to_path_buf(), expected: expected.to_string(), actual })
    }
}

/// Verifies `archive` against `sha256`, then extracts it into `dest` (created if needed),
/// overwriting existing files. See the module docs for the guards.
///
/// A checksum mismatch is reported as [`ArchiveError::Corrupt`] before `dest` is created or
/// touched. Extraction is not atomic: on a later error, `dest` holds what was extracted so far.
pub fn unpack(archive: &Path, sha256: &str, dest: &Path) -> Result<Unpacked, ArchiveError> {
    check_checksum(sha256)?;
    let read_error = |source| ArchiveError::Read { path: archive.to_path_buf(), source };
    // One open file for both passes, so the bytes extracted are the bytes verified even if the
    // path is replaced in between.
    let mut file = File::open(archive).map_err(read_error)?;
    verify_open(&mut file, archive, sha256)?;
    file.seek(SeekFrom::Start(0)).map_err(read_error)?;
    let destination_error = |source| ArchiveError::Destination { path: dest.to_path_buf(), source };
    fs::create_dir_all(dest).map_err(destination_error)?;
    let dest = dest.canonicalize().map_err(destination_error)?;
    Extraction { archive, dest: &dest, known_dirs: HashSet::new() }.run(file)
}

/// One extraction into a canonical destination.
struct Extraction<'a> {
    archive: &'a Path,
    dest: &'a Path,
    /// Directories (relative) known to be real directories inside the destination, or links
    /// already there that resolve to directories inside it. Valid while regular files are
    /// written: links from the archive are only created after that.
    known_dirs: HashSet<PathBuf>,
}

impl Extraction<'_> {
    fn malformed(&self, source: io::Error) -> ArchiveError {
        ArchiveError::Malformed { path: self.archive.to_path_buf(), source }
    }

    fn refuse(&self, entry: &Path, reason: impl Into<String>) -> ArchiveError {
        ArchiveError::Unsafe { archive: self.archive.to_path_buf(), entry: entry.to_path_buf(), reason: reason.into() }
    }

    fn extract_error(&self, rel: &Path, source: io::Error) -> ArchiveError {
        ArchiveError::Extract {
            archive: self.archive.to_path_buf(),
            entry: rel.to_path_buf(),
            dest: self.dest.to_path_buf(),
            source,
        }
    }

    /// Makes sure the directory `rel_dir` exists inside the destination, creating what is
    /// missing. Each component is checked once: a real directory, a missing one (created), or a
    /// link already in the destination that resolves to a directory inside it.
    fn ensure_dir(&mut self, rel_dir: &Path, entry: &Path) -> Result<(), ArchiveError> {
        if rel_dir.as_os_str().is_empty() || self.known_dirs.contains(rel_dir) {
            return Ok(());
        }
        let mut prefix = PathBuf::new();
        for part in rel_dir.iter() {
            prefix.push(part);
            if self.known_dirs.contains(&prefix) {
                continue;
            }
            let abs = self.dest.join(&prefix);
            match fs::symlink_metadata(&abs) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    let real = abs.canonicalize().map_err(|e| self.extract_error(entry, e))?;
                    if !real.starts_with(self.dest) {
                        let reason = format!("`{}` is a link leading outside the destination", prefix.display());
                        return Err(self.refuse(entry, reason));
                    }
                    if !real.is_dir() {
                        let source = io::Error::new(io::ErrorKind::NotADirectory, "a link to a file is in the way");
                        return Err(self.extract_error(entry, source));
                    }
                }
                Ok(_) => {
                    let source = io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("`{}` is in the way of a directory", prefix.display()),
                    );
                    return Err(self.extract_error(entry, source));
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => match fs::create_dir(&abs) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists && abs.is_dir() => {}
                    Err(err) => return Err(self.extract_error(entry, err)),
                },
                Err(err) => return Err(self.extract_error(entry, err)),
            }
            self.known_dirs.insert(prefix.clone());
        }
        Ok(())
    }

    /// Writes a regular file entry; returns its size.
    ///
    /// The file is created anew (never opened through an existing link: whatever is at the path
    /// is unlinked first), filled through `buffer`, then given its permission bits (without
    /// set-id and sticky bits) and modification time.
    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        buffer: &mut [u8],
    ) -> Result<u64, ArchiveError> {
        self.ensure_dir(rel.parent().unwrap_or(Path::new("")), rel)?;
        let header = entry.header();
        let mode = header.mode().map_err(|e| self.malformed(e))? & 0o777;
        let mtime = UNIX_EPOCH + Duration::from_secs(header.mtime().map_err(|e| self.malformed(e))?);
        let size = entry.size();
        let path = self.dest.join(rel);
        let create = || File::options().write(true).create_new(true).open(&path);
        let mut file = match create() {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => return Err(self.extract_error(rel, err)),
                }
                create().map_err(|e| self.extract_error(rel, e))?
            }
            Err(err) => return Err(self.extract_error(rel, err)),
        };
        let mut copied = 0u64;
        loop {
            let n = match entry.read(buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(self.malformed(err)),
            };
            file.write_all(&buffer[..n]).map_err(|e| self.extract_error(rel, e))?;
            copied += n as u64;
        }
        if copied != size {
            let message = format!("the archive ends inside `{}`", rel.display());
            return Err(self.malformed(io::Error::new(io::ErrorKind::UnexpectedEof, message)));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(mode)).map_err(|e| self.extract_error(rel, e))?;
        }
        #[cfg(not(unix))]
        let _ = mode;
        file.set_times(FileTimes::new().set_modified(mtime).set_accessed(mtime))
            .map_err(|e| self.extract_error(rel, e))?;
        Ok(size)
    }

    fn extract<R: Read>(&self, entry: &mut tar::Entry<'_, R>, rel: &Path) -> Result<(), ArchiveError> {
        match entry.unpack_in(self.dest) {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.refuse(rel, "the tar library refused to place it inside the destination")),
            Err(source) => Err(self.extract_error(rel, source)),
        }
    }

    /// The entry's path as a plain relative path, or why it is refused.
    fn relative_path<R: Read>(&self, entry: &tar::Entry<'_, R>) -> Result<PathBuf, ArchiveError> {
        let stored = entry.path().map_err(|e| self.malformed(e))?;
        let mut rel = PathBuf::new();
        for component in stored.components() {
            match component {
                Component::Normal(part) => rel.push(part),
                Component::CurDir => {}
                Component::ParentDir => {
                    return Err(self.refuse(&stored, "`..` is refused: entries may not leave the destination"));
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self.refuse(&stored, "absolute paths are refused: entries are relative"));
                }
            }
        }
        Ok(rel)
    }

    /// The link's target, refused if it leaves the destination when its parent sits
    /// `parent_depth` directories below it.
    fn link_target<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        rel: &Path,
        parent_depth: usize,
    ) -> Result<PathBuf, ArchiveError> {
        let target = entry.link_name().map_err(|e| self.malformed(e))?;
        let Some(target) = target else {
            return Err(self.refuse(rel, "a symbolic link without a target"));
        };
        match link_target_problem(parent_depth, &target) {
            Some(problem) => Err(self.refuse(rel, problem.replace("the root directory", "the destination"))),
            None => Ok(target.into_owned()),
        }
    }

    /// How many directories below the destination the (possibly not yet existing) directory
    /// `rel_dir` really is once links are resolved, or `None` if it resolves outside.
    fn real_depth(&self, rel_dir: &Path) -> io::Result<Option<usize>> {
        let mut probe = self.dest.join(rel_dir);
        let mut missing = 0usize;
        loop {
            match probe.canonicalize() {
                Ok(real) => return Ok(real.strip_prefix(self.dest).ok().map(|inside| inside.iter().count() + missing)),
                Err(err) if err.kind() == io::ErrorKind::NotFound && probe.as_path() != self.dest => {
                    missing += 1;
                    probe.pop();
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn run(mut self, file: File) -> Result<Unpacked, ArchiveError> {
        let (writer, reader) = pipe(PIPE_CHUNK, PIPE_DEPTH);
        // A second thread reads and decompresses; this one parses and writes the files.
        let (extracted, decompressed) = std::thread::scope(|scope| {
            let decompressor = spawn(scope, "chengis-unzstd", move || decompress(file, writer))?;
            let extracted = self.extract_all(reader);
            Ok((extracted, joined(decompressor)))
        })
        .map_err(|source| ArchiveError::Thread { source })?;
        match (extracted, decompressed) {
            (Ok(unpacked), Ok(())) => Ok(unpacked),
            // A stream cut short is explained by the decoder's own error.
            (Ok(_) | Err(ArchiveError::Malformed { .. }), Err(err)) if err.kind() != io::ErrorKind::BrokenPipe => {
                Err(self.malformed(err))
            }
            (Err(err), _) => Err(err),
            (Ok(_), Err(err)) => Err(self.malformed(err)),
        }
    }

    fn extract_all(&mut self, reader: PipeReader) -> Result<Unpacked, ArchiveError> {
        let mut archive = tar::Archive::new(reader);
        archive.set_preserve_mtime(true);
        archive.set_preserve_permissions(false);
        archive.set_preserve_ownerships(false);
        archive.set_unpack_xattrs(false);
        archive.set_overwrite(true);

        let mut unpacked = Unpacked::default();
        let mut buffer = vec![0u8; READ_BUFFER];
        // Directories are applied last, deepest first, so that their permissions cannot stop
        // their contents from being written; links come before them and after all files, so
        // that no file of this archive is written through a link of this archive.
        let mut dirs = Vec::new();
        let mut links = Vec::new();
        for entry in archive.entries().map_err(|e| self.malformed(e))? {
            let mut entry = entry.map_err(|e| self.malformed(e))?;
            let rel = self.relative_path(&entry)?;
            let kind = entry.header().entry_type();
            if kind == EntryType::XGlobalHeader {
                continue;
            }
            if rel.as_os_str().is_empty() {
                if kind == EntryType::Directory {
                    continue;
                }
                return Err(self.refuse(&rel, "an entry with an empty path"));
            }
            match kind {
                EntryType::Regular | EntryType::Continuous => {
                    unpacked.bytes += self.write_file(&mut entry, &rel, &mut buffer)?;
                    unpacked.files += 1;
                }
                EntryType::Directory => dirs.push((rel, entry)),
                EntryType::Symlink => {
                    // Refuse obviously escaping links right away; the real depth of the parent
                    // is checked again when the link is created.
                    let depth = rel.iter().count() - 1;
                    self.link_target(&entry, &rel, depth)?;
                    links.push((rel, entry));
                }
                other => {
                    return Err(self.refuse(
                        &rel,
                        format!(
                            "entry type {other:?} is not extracted: only files, directories and symbolic links are"
                        ),
                    ));
                }
            }
        }
        for (rel, mut entry) in links {
            let parent = rel.parent().unwrap_or(Path::new(""));
            let depth = self.real_depth(parent).map_err(|e| self.extract_error(&rel, e))?;
            let Some(depth) = depth else {
                return Err(self.refuse(&rel, "its directory resolves outside the destination"));
            };
            self.link_target(&entry, &rel, depth)?;
            self.extract(&mut entry, &rel)?;
        }
        dirs.sort_by(|a, b| b.0.cmp(&a.0));
        for (rel, mut entry) in dirs {
            self.extract(&mut entry, &rel)?;
        }
        // Read past the end-of-archive blocks to the end of the stream, so that the decompressor
        // finishes (and reports any problem) rather than finding nobody listening.
        io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(|e| self.malformed(e))?;
        Ok(unpacked)
    }
}

/// Decompresses `file` into `writer`.
fn decompress(file: File, mut writer: PipeWriter) -> io::Result<()> {
    let mut decoder = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(READ_BUFFER, file))?;
    let mut buffer = vec![0u8; PIPE_CHUNK];
    loop {
        match decoder.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => writer.write_all(&buffer[..n])?,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    writer.finish()
}

#[cfg(test)]
mod tests;
