//! The on-disk cache of compiled components: `<dir>/<sha256>-<engine>.cwasm`, where `<engine>`
//! fingerprints wasmtime's version and the engine's settings, so that an upgrade or a changed
//! setting compiles afresh instead of loading an incompatible artifact.
//!
//! A miss compiles with an engine of its own, configured exactly like the runtime's and dropped
//! right after: Cranelift keeps its working buffers in the engine that compiled, for reuse
//! (15 MB after the 13 builtins), and a server's one engine would hold them for good.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::component::Component;
use wasmtime::{Config, Engine};

use crate::trust::Digest;

/// Where compiled components are kept.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
    config: Config,
}

/// How a component was obtained, for benchmarks and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a cached artifact.
    Hit,
    /// Compiled (and stored, when the cache is writable).
    Compiled,
}

impl ComponentCache {
    /// A cache in `dir` (created when first written) for artifacts of `engine`, which was made
    /// from `config` (misses are compiled by a new engine from the same configuration).
    pub fn new(dir: PathBuf, engine: &Engine, config: &Config) -> Self {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        ComponentCache { dir, engine_key: format!("{:016x}", hasher.finish()), config: config.clone() }
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}-{}.cwasm", digest.hex(), self.engine_key))
    }

    /// Loads the compiled component for `bytes` (whose digest is `digest`), compiling and
    /// storing it on a miss or when the cached artifact is unusable.
    pub fn load(&self, engine: &Engine, digest: &Digest, bytes: &[u8]) -> wasmtime::Result<(Component, CacheOutcome)> {
        let path = self.path(digest);
        if path.exists() {
            // SAFETY: the file is an artifact this cache wrote (`precompile_component`) for
            // an engine of the same fingerprint, in a directory owned by the server; wasmtime
            // also checks its header and compatibility before using it.
            if let Ok(component) = unsafe { Component::deserialize_file(engine, &path) } {
                return Ok((component, CacheOutcome::Hit));
            }
        }
        // The compiling engine (and Cranelift's buffers in it) is dropped at the end of this
        // statement.
        let artifact = Engine::new(&self.config)?.precompile_component(bytes)?;
        let component = match self.store(&path, &artifact) {
            // SAFETY: the file was just written with the artifact below, in a directory owned by
            // the server; wasmtime checks its header and compatibility too.
            Ok(()) => unsafe { Component::deserialize_file(engine, &path) }?,
            // A cache that cannot be written only costs a recompile next time.
            // SAFETY: the artifact was made a moment ago by `precompile_component` of an engine
            // with the same configuration as `engine`.
            Err(_) => unsafe { Component::deserialize(engine, &artifact) }?,
        };
        Ok((component, CacheOutcome::Compiled))
    }

    fn store(&self, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        // Unique per process and per write, so that concurrent loads never share a file.
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let write = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp{}-{write}", std::process::id()));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(artifact)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}
