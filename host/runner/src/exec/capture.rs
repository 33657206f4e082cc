//! The output path every executor shares: raw bytes of stdout/stderr are masked (each stream on
//! its own, so a secret split across reads is still caught), split into numbered lines and
//! capped, then sent to the run's event channel.

use super::lines::{LineSplitter, LogLine, Stream};
use super::mask::{MaskStream, SecretMasker};
use tokio::sync::mpsc;

/// Masks, splits and caps one step's output.
pub struct OutputCapture<'m> {
    lines: LineSplitter,
    stdout: MaskStream<'m>,
    stderr: MaskStream<'m>,
    masked: Vec<u8>,
}

impl<'m> OutputCapture<'m> {
    /// A capture numbering lines from `first_line` and keeping at most `cap` bytes.
    pub fn new(masker: &'m SecretMasker, first_line: u64, cap: u64) -> Self {
        OutputCapture {
            lines: LineSplitter::new(first_line, cap),
            stdout: masker.stream(),
            stderr: masker.stream(),
            masked: Vec::with_capacity(16 * 1024),
        }
    }

    /// Adds raw bytes of `stream`; returns the lines they complete.
    pub fn feed(&mut self, stream: Stream, bytes: &[u8]) -> Vec<LogLine> {
        self.masked.clear();
        match stream {
            Stream::Stderr => self.stderr.feed(bytes, &mut self.masked),
            Stream::Stdout | Stream::System => self.stdout.feed(bytes, &mut self.masked),
        }
        self.lines.push(stream, &self.masked)
    }

    /// Flushes both streams at the end of the step; returns the last lines (and the cap
    /// warning, if any).
    pub fn finish(&mut self) -> Vec<LogLine> {
        let mut out = Vec::new();
        for stream in [Stream::Stdout, Stream::Stderr] {
            self.masked.clear();
            match stream {
                Stream::Stderr => self.stderr.finish(&mut self.masked),
                _ => self.stdout.finish(&mut self.masked),
            }
            out.extend(self.lines.push(stream, &self.masked));
        }
        out.extend(self.lines.finish());
        out
    }

    /// Output bytes dropped by the cap so far.
    pub fn dropped(&self) -> u64 {
        self.lines.dropped()
    }

    /// The number the next line gets.
    pub fn next_number(&self) -> u64 {
        self.lines.next_number()
    }
}

/// Sends `lines` wrapped by `wrap`, waiting when the receiver is slow. A closed receiver means
/// nobody is listening any more; the step still runs to its end.
pub async fn send_lines<E>(out: &mpsc::Sender<E>, wrap: &impl Fn(LogLine) -> E, lines: Vec<LogLine>) {
    for line in lines {
        let _ = out.send(wrap(line)).await;
    }
}
