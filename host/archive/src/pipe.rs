//! A bounded in-process byte pipe between two threads, so that compression (or decompression)
//! runs beside the file system work instead of after it.
//!
//! Bytes travel in chunks of a fixed size; emptied chunks travel back to be reused, so a long
//! stream allocates only a handful of buffers. The writer must call [`PipeWriter::finish`]:
//! a writer dropped without it makes the reader fail instead of seeing a clean end, so that a
//! stream cut short by an error is never mistaken for a complete one.

use std::io::{self, BufRead, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};

/// The writing end of a pipe from [`pipe`].
pub(crate) struct PipeWriter {
    chunk: usize,
    buf: Vec<u8>,
    full: SyncSender<Vec<u8>>,
    empty: Receiver<Vec<u8>>,
}

/// The reading end of a pipe from [`pipe`].
pub(crate) struct PipeReader {
    current: Vec<u8>,
    pos: usize,
    done: bool,
    full: Receiver<Vec<u8>>,
    empty: SyncSender<Vec<u8>>,
}

/// A pipe carrying chunks of `chunk` bytes, at most `depth` of them in flight.
pub(crate) fn pipe(chunk: usize, depth: usize) -> (PipeWriter, PipeReader) {
    let (full_tx, full_rx) = sync_channel(depth);
    let (empty_tx, empty_rx) = sync_channel(depth + 2);
    let writer = PipeWriter { chunk, buf: Vec::with_capacity(chunk), full: full_tx, empty: empty_rx };
    let reader = PipeReader { current: Vec::new(), pos: 0, done: false, full: full_rx, empty: empty_tx };
    (writer, reader)
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the reading side of the pipe stopped")
}

impl PipeWriter {
    fn send(&mut self) -> io::Result<()> {
        let next = match self.empty.try_recv() {
            Ok(mut reused) => {
                reused.clear();
                reused
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => Vec::with_capacity(self.chunk),
        };
        let full = std::mem::replace(&mut self.buf, next);
        self.full.send(full).map_err(|_| broken())
    }

    /// Sends what is buffered and marks the end of the stream.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        // An empty chunk is the end marker (data chunks are never empty).
        self.full.send(Vec::new()).map_err(|_| broken())
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = (self.chunk - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.chunk {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = out.len().min(available.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for PipeReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.current.len() {
            if self.done {
                return Ok(&[]);
            }
            match self.full.recv() {
                Ok(next) if next.is_empty() => {
                    self.done = true;
                    return Ok(&[]);
                }
                Ok(next) => {
                    let used = std::mem::replace(&mut self.current, next);
                    self.pos = 0;
                    // The writer may be gone or have enough spares; either way the buffer is
                    // simply dropped.
                    if used.capacity() > 0 {
                        let _ = self.empty.try_send(used);
                    }
                }
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the writing side of the pipe stopped before the end of the stream",
                    ));
                }
            }
        }
        Ok(&self.current[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.current.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_bytes_in_order_and_ends_cleanly() {
        let (mut writer, mut reader) = pipe(7, 2);
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let thread = std::thread::spawn(move || {
            for piece in sent.chunks(13) {
                writer.write_all(piece).expect("write");
            }
            writer.finish().expect("finish");
        });
        let mut got = Vec::new();
        reader.read_to_end(&mut got).expect("read");
        thread.join().expect("writer thread");
        assert_eq!(got, data);
    }

    #[test]
    fn a_writer_dropped_without_finish_is_an_error_not_an_end() {
        let (mut writer, mut reader) = pipe(4, 2);
        writer.write_all(b"abcdef").expect("write");
        drop(writer);
        let mut got = Vec::new();
        let err = reader.read_to_end(&mut got).expect_err("cut short");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(got, b"abcd");
    }

    #[test]
    fn a_dropped_reader_breaks_the_writer() {
        let (mut writer, reader) = pipe(4, 1);
        drop(reader);
        let err = writer.write_all(b"abcdefgh").expect_err("broken");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
