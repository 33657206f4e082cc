//! Gives heap memory the process freed back to the operating system, at the few points where a
//! lot is freed at once: after start-up, after the builtin plugins are compiled, and after a
//! password check (argon2id works in 19 MiB).
//!
//! glibc's allocator keeps freed memory in its arenas for reuse and returns little of it on
//! its own: without this a fresh server idled at 113 MB, most of it free. `malloc_trim(0)`
//! hands every free page back (measured in README's "Performance" section); it takes well
//! under a millisecond, so it is only called where much was freed, never per request.

/// Returns the allocator's free memory to the OS (glibc's `malloc_trim(0)`); a no-op on other
/// C libraries, whose allocators purge on their own terms.
pub fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the allocator's own locks and touches only its free lists; it
    // is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
