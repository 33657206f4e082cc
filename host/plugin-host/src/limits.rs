//! Per-call limits ([`Limits`]) and the [`MemoryLimiter`] that enforces the memory cap. The
//! limiter remembers that it refused a growth, so that a failed call is classified by the
//! host's own state rather than by the text of the guest's error.

use std::time::Duration;

/// The limits of one plugin call. Configurable per plugin; the defaults suit notifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest a call may take, guest code and waiting host calls together.
    pub timeout: Duration,
    /// The most linear memory (and table bytes) the guest may grow to.
    pub memory_bytes: usize,
    /// The most bytes a call may return (manifest, failure, decision) or set as outputs.
    pub output_bytes: usize,
    /// The most bytes of log (including the guest's stdout and stderr) per call; more is cut.
    pub log_bytes: usize,
    /// The longest log line; longer lines are cut.
    pub log_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(5),
            memory_bytes: 64 * 1024 * 1024,
            output_bytes: 1024 * 1024,
            log_bytes: 4 * 1024 * 1024,
            log_line_bytes: 16 * 1024,
        }
    }
}

/// A [`wasmtime::ResourceLimiter`] that caps memory and remembers a refusal.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit_bytes: usize,
    exceeded: bool,
}

impl MemoryLimiter {
    /// A limiter with this cap.
    pub fn new(limit_bytes: usize) -> Self {
        MemoryLimiter { limit_bytes, exceeded: false }
    }

    /// Whether a growth was refused during this store's life.
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = desired <= self.limit_bytes && maximum.is_none_or(|max| desired <= max);
        if !allowed {
            self.exceeded = true;
        }
        Ok(allowed)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        // A table element is a pointer; bound tables by the same byte budget.
        let allowed = desired.saturating_mul(8) <= self.limit_bytes && maximum.is_none_or(|max| desired <= max);
        if !allowed {
            self.exceeded = true;
        }
        Ok(allowed)
    }
}
