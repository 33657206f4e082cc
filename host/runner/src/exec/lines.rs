//! Output as numbered lines: masked bytes are split at newlines (and at 64 KiB for endless
//! lines), stamped with time and stream, and capped per step.

use std::time::{SystemTime, UNIX_EPOCH};

/// Longest line kept whole; longer lines are broken into pieces of this size.
pub const MAX_LINE: usize = 64 * 1024;

pub use chengis_model::log::{LogLine, Stream};

/// Splits the masked output of one step into lines and enforces the output cap.
#[derive(Debug)]
pub struct LineSplitter {
    next: u64,
    cap: u64,
    kept: u64,
    dropped: u64,
    partial: [Vec<u8>; 2],
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl LineSplitter {
    /// A splitter numbering from `first` and keeping at most `cap` bytes.
    pub fn new(first: u64, cap: u64) -> Self {
        LineSplitter { next: first, cap, kept: 0, dropped: 0, partial: [Vec::new(), Vec::new()] }
    }

    fn slot(stream: Stream) -> usize {
        match stream {
            Stream::Stdout | Stream::System => 0,
            Stream::Stderr => 1,
        }
    }

    /// Adds bytes of `stream`; returns the lines they complete.
    pub fn push(&mut self, stream: Stream, bytes: &[u8]) -> Vec<LogLine> {
        let mut lines = Vec::new();
        let slot = Self::slot(stream);
        let mut rest = bytes;
        while !rest.is_empty() {
            match rest.iter().position(|b| *b == b'\n') {
                Some(nl) => {
                    let mut piece = std::mem::take(&mut self.partial[slot]);
                    piece.extend_from_slice(&rest[..nl]);
                    rest = &rest[nl + 1..];
                    self.emit(stream, piece, 1, &mut lines);
                }
                None => {
                    self.partial[slot].extend_from_slice(rest);
                    rest = &[];
                }
            }
            while self.partial[slot].len() >= MAX_LINE {
                let tail = self.partial[slot].split_off(MAX_LINE);
                let piece = std::mem::replace(&mut self.partial[slot], tail);
                self.emit(stream, piece, 0, &mut lines);
            }
        }
        lines
    }

    /// Ends the step: the unterminated last lines, then the cap warning if anything was dropped.
    pub fn finish(&mut self) -> Vec<LogLine> {
        let mut lines = Vec::new();
        for (slot, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
            let piece = std::mem::take(&mut self.partial[slot]);
            if !piece.is_empty() {
                self.emit(stream, piece, 0, &mut lines);
            }
        }
        if self.dropped > 0 {
            let text =
                format!("[chengis] output cap of {} reached: dropped {} bytes", human_size(self.cap), self.dropped);
            lines.push(self.line(Stream::System, text));
        }
        lines
    }

    /// Bytes dropped because of the cap so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The number the next line will get.
    pub fn next_number(&self) -> u64 {
        self.next
    }

    /// A line written by Chengis itself (not counted against the cap).
    pub fn system(&mut self, text: String) -> LogLine {
        self.line(Stream::System, text)
    }

    fn line(&mut self, stream: Stream, text: String) -> LogLine {
        let number = self.next;
        self.next += 1;
        LogLine { number, stream, time_ms: now_ms(), text }
    }

    fn emit(&mut self, stream: Stream, mut piece: Vec<u8>, newline: u64, lines: &mut Vec<LogLine>) {
        let size = piece.len() as u64 + newline;
        if self.dropped > 0 || self.kept + size > self.cap {
            self.dropped += size;
            return;
        }
        self.kept += size;
        if piece.last() == Some(&b'\r') {
            piece.pop();
        }
        let text = match String::from_utf8(piece) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        lines.push(self.line(stream, text));
    }
}

/// `10.0 MiB`, `512 B`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(lines: &[LogLine]) -> Vec<(u64, Stream, &str)> {
        lines.iter().map(|l| (l.number, l.stream, l.text.as_str())).collect()
    }

    #[test]
    fn numbers_lines_across_streams_and_chunks() {
        let mut s = LineSplitter::new(1, 1 << 20);
        let mut all = s.push(Stream::Stdout, b"one\ntw");
        all.extend(s.push(Stream::Stderr, b"err\r\n"));
        all.extend(s.push(Stream::Stdout, b"o\nthree"));
        all.extend(s.finish());
        assert_eq!(
            texts(&all),
            [
                (1, Stream::Stdout, "one"),
                (2, Stream::Stderr, "err"),
                (3, Stream::Stdout, "two"),
                (4, Stream::Stdout, "three")
            ]
        );
    }

    #[test]
    fn long_lines_are_broken() {
        let mut s = LineSplitter::new(1, u64::MAX);
        let mut all = s.push(Stream::Stdout, &vec![b'a'; MAX_LINE * 2 + 10]);
        all.extend(s.finish());
        assert_eq!(all.iter().map(|l| l.text.len()).collect::<Vec<_>>(), [MAX_LINE, MAX_LINE, 10]);
    }

    #[test]
    fn cap_drops_the_rest_with_one_warning() {
        let mut s = LineSplitter::new(1, 11);
        let mut all = s.push(Stream::Stdout, b"12345\n1234\nabc\ndefg\n");
        all.extend(s.push(Stream::Stderr, b"more\n"));
        all.extend(s.finish());
        assert_eq!(texts(&all)[..2], [(1, Stream::Stdout, "12345"), (2, Stream::Stdout, "1234")]);
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].stream, Stream::System);
        assert_eq!(all[2].text, "[chengis] output cap of 11 B reached: dropped 14 bytes");
        assert_eq!(s.dropped(), 14);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let mut s = LineSplitter::new(1, 100);
        let lines = s.push(Stream::Stdout, b"a\xffb\n");
        assert_eq!(lines[0].text, "a\u{fffd}b");
    }
}
