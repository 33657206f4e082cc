//! The step runner: PID 1 of every job container is a small `sh` loop that reads one line per
//! step from its stdin (the script file to run and an end marker), runs the script with stdin
//! from /dev/null, kills whatever the step left running, and prints the marker with the exit
//! code on both stdout and stderr. The agent stays attached to PID 1, so a step costs one write
//! and the output read back, instead of the engine's create-start-inspect round trips of an exec
//! (about 40 ms each on a loaded engine).
//!
//! Scripts are files in the job's private `/chengis` directory; the marker is random per
//! sandbox and lives only in the runner's shell variables, never in a step's environment.

use std::fmt::Write as _;

/// PID 1 of a job container. It sets no traps: ignored signals would be inherited by the steps,
/// and as PID 1 of its namespace it is immune to signals without handlers anyway.
pub const RUNNER: &str = "while read -r script mark; do \
sh \"$script\" </dev/null; rc=$?; \
kill -KILL -1 2>/dev/null; \
printf '\\036%s %s\\n' \"$mark\" \"$rc\"; printf '\\036%s %s\\n' \"$mark\" \"$rc\" >&2; \
done";

/// Quotes `s` for a POSIX shell (single quotes; embedded quotes closed and escaped).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The script of one step: go to its directory, export its environment on top of the image's,
/// and `exec` its command.
pub fn step_script(cwd: &str, env: &[(String, String)], program: &str, args: &[String]) -> String {
    let mut s = String::from("cd ");
    s.push_str(&shell_quote(cwd));
    s.push_str(" || exit 1\n");
    for (k, v) in env {
        let _ = writeln!(s, "export {k}={}", shell_quote(v));
    }
    s.push_str("exec ");
    s.push_str(&shell_quote(program));
    for a in args {
        s.push(' ');
        s.push_str(&shell_quote(a));
    }
    s.push('\n');
    s
}

/// Finds the end marker (an ASCII record separator, the marker, the exit code and a newline) in
/// one output stream, passing every byte before it through. Only a tail that could be the start
/// of the marker is held back, so ordinary output (newlines included) flows at once.
#[derive(Debug)]
pub struct MarkerScanner {
    pattern: Vec<u8>,
    pending: Vec<u8>,
    exit: Option<i32>,
}

impl MarkerScanner {
    /// A scanner for `mark`.
    pub fn new(mark: &str) -> Self {
        MarkerScanner { pattern: format!("\u{1e}{mark} ").into_bytes(), pending: Vec::new(), exit: None }
    }

    /// The exit code, once the marker was seen.
    pub fn exit(&self) -> Option<i32> {
        self.exit
    }

    /// Adds bytes; returns the step output among them (holding back what may be the start of
    /// the marker until it is decided).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        if self.exit.is_some() {
            return Vec::new();
        }
        self.pending.extend_from_slice(bytes);
        if let Some(at) = find(&self.pending, &self.pattern) {
            let rest = &self.pending[at + self.pattern.len()..];
            if let Some(nl) = rest.iter().position(|b| *b == b'\n') {
                let code = std::str::from_utf8(&rest[..nl]).ok().and_then(|c| c.trim().parse().ok()).unwrap_or(-1);
                self.exit = Some(code);
                let out = self.pending[..at].to_vec();
                self.pending.clear();
                return out;
            }
            // The marker's code is still arriving.
            let out = self.pending[..at].to_vec();
            self.pending.drain(..at);
            return out;
        }
        // Keep the longest tail that could still become the pattern.
        let keep = (1..self.pattern.len().min(self.pending.len() + 1))
            .rev()
            .find(|&n| self.pending.ends_with(&self.pattern[..n]))
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_vec();
        self.pending.drain(..cut);
        out
    }

    /// What is held back (when the stream ends without a marker).
    pub fn flush(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&str]) -> (String, Option<i32>) {
        let mut s = MarkerScanner::new("M0123");
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.feed(c.as_bytes()));
        }
        (String::from_utf8(out).unwrap(), s.exit())
    }

    #[test]
    fn the_marker_ends_the_output_exactly() {
        assert_eq!(scan(&["hello\n\u{1e}M0123 0\n"]), ("hello\n".into(), Some(0)));
        assert_eq!(scan(&["no newline\u{1e}M0123 3\n"]), ("no newline".into(), Some(3)));
        assert_eq!(scan(&["\u{1e}M0123 137\n"]), ("".into(), Some(137)));
    }

    #[test]
    fn a_marker_split_across_chunks_is_found() {
        assert_eq!(scan(&["a\n", "\u{1e}M01", "23 4", "2\n"]), ("a\n".into(), Some(42)));
        assert_eq!(scan(&["x\u{1e}", "M0123 1\n"]), ("x".into(), Some(1)));
    }

    #[test]
    fn newlines_are_never_held_back_and_look_alikes_pass() {
        let mut s = MarkerScanner::new("M0123");
        assert_eq!(s.feed(b"running\n"), b"running\n");
        assert_eq!(s.feed(b"M0123 5\n"), b"M0123 5\n");
        assert_eq!(s.feed(b"\x1eM01 x\n"), b"\x1eM01 x\n");
        assert_eq!(s.exit(), None);
    }

    #[test]
    fn scripts_quote_everything() {
        let s = step_script(
            "/workspace/a b",
            &[("X".into(), "it's $HOME\nnext".into())],
            "sh",
            &["-c".into(), "echo 'q'".into()],
        );
        assert_eq!(
            s,
            "cd '/workspace/a b' || exit 1\nexport X='it'\\''s $HOME\nnext'\nexec 'sh' '-c' 'echo '\\''q'\\'''\n"
        );
    }
}
