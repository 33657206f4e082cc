//! Gives heap memory the process freed back to the operating system: fixed allocator
//! thresholds for the long-running commands (`chengis serve`, `chengis agent`), and a trim at
//! the few points where much is freed at once (after start-up, after the builtin plugins are
//! compiled, after a password check).
//!
//! glibc's allocator adapts its thresholds to the largest block freed: after Cranelift or
//! argon2id (19 MiB) freed a few large blocks, later ones come from the arenas instead of their
//! own mappings, and an arena's free top is kept for reuse up to twice that size. A fresh
//! server idled at 113 MB, most of it free. `malloc_trim(0)` hands back the free pages inside
//! the arenas but not the free tops of the threads' arenas; fixed thresholds keep large blocks
//! in mappings of their own (unmapped when freed) and arena tops small. README's "Performance"
//! section has the figures.

/// Blocks of this size or more get a mapping of their own, returned to the OS when freed
/// (glibc's starting value is 128 KiB; it then grows with the blocks freed, up to 32 MiB).
pub const MMAP_THRESHOLD: usize = 256 * 1024;

/// An arena's free top beyond this goes back to the OS when a block is freed.
pub const TRIM_THRESHOLD: usize = 1024 * 1024;

/// Fixes the allocator's thresholds ([`MMAP_THRESHOLD`], [`TRIM_THRESHOLD`]) for a process that
/// runs for long; a no-op on other C libraries, whose allocators purge on their own terms.
pub fn configure_for_server() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt sets two of the allocator's parameters under its own lock; it takes no
    // pointers. Both values fit an int.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
    }
}

/// Returns the free pages inside the allocator's arenas to the OS (glibc's `malloc_trim(0)`);
/// a no-op on other C libraries. It walks every arena under its lock, so it is called where
/// much was freed, never per request.
pub fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the allocator's own locks and touches only its free lists; it
    // is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
